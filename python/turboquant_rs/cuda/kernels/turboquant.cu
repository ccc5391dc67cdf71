// TurboQuant CUDA kernels: the core's rotation, fused quantize (plain and KV append), dequantize,
// and decode attention on packed K/V (split over the sequence, then a reduction).
//
// Compiled at run time by turboquant_rs.cuda (cupy.RawModule, NVRTC), once per device and
// configuration. The configuration arrives as macros:
//   TQ_D            vector dimension
//   TQ_P            Hadamard block size, TQ_LAYOUT 0 single / 1 tiled / 2 overlapping
//   TQ_ROUNDS       rounds, TQ_FIRST_PERM first round with a permutation (rotation.rs)
//   TQ_SCALE_BITS   1/sqrt(P) as float32 bits
//   TQ_IN           element type of inputs / outputs: 0 float32, 1 float16, 2 bfloat16
//   TQ_BITS         quantizer width; TQ_CELLS 1 when the cell index is used (bits <= 4)
//   TQ_WITH_ATTN    1 to compile the attention kernels (TQ_KB, TQ_VB key / value widths,
//                   TQ_RG query rows per attention block)
// Tables (signs, permutations, codebooks) are device pointers passed to every kernel.
// No headers are included: fp16/bf16 conversions are PTX, so NVRTC needs no include path.
//
// Formats (one format with the Rust core): packing.rs (a row of D codes of b bits is a
// little-endian bit stream of ceil(D*b/8) bytes, code j at stream bits [j*b, (j+1)*b), LSB
// first) and kv/mod.rs (per (b, h) stream, token-major rows, one f32 scale per row).

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define TQ_INF __int_as_float(0x7f800000)
#define TQ_SCALE __int_as_float(TQ_SCALE_BITS)

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
__device__ __forceinline__ float b2f(u16 h) { return __uint_as_float(((u32)h) << 16); }
__device__ __forceinline__ u16 f2b(float f) {
    u16 h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

#if TQ_IN == 0
typedef float elem_t;
__device__ __forceinline__ float to_f(elem_t v) { return v; }
__device__ __forceinline__ elem_t from_f(float v) { return v; }
#elif TQ_IN == 1
typedef u16 elem_t;
__device__ __forceinline__ float to_f(elem_t v) { return h2f(v); }
__device__ __forceinline__ elem_t from_f(float v) { return f2h(v); }
#else
typedef u16 elem_t;
__device__ __forceinline__ float to_f(elem_t v) { return b2f(v); }
__device__ __forceinline__ elem_t from_f(float v) { return f2b(v); }
#endif

template <typename T> __device__ __forceinline__ void tq_swap(T& a, T& b) {
    T t = a;
    a = b;
    b = t;
}

// ---------------------------------------------------------------------------------------------
// Walsh-Hadamard building blocks. Stages run in increasing span h = 1, 2, 4, ..., each
// (u, v) -> (u + v, u - v), then one multiply by 1/sqrt(P): the order of kernels::fwht_scaled,
// so the results are bit-identical to the CPU's.

// In-register stages h = 1 .. E/2 over E consecutive elements.
template <int E> __device__ __forceinline__ void fwht_reg(float* v) {
#pragma unroll
    for (int h = 1; h < E; h <<= 1) {
#pragma unroll
        for (int i = 0; i < E; ++i) {
            if ((i & h) == 0) {
                float a = v[i], b = v[i + h];
                v[i] = a + b;
                v[i + h] = a - b;
            }
        }
    }
}

// Shuffle stages across L lanes (a team of L consecutive lanes, each holding E consecutive
// elements): spans E, 2E, ..., (L/2)E. The lower partner keeps a + b, the upper a - b.
template <int E, int L> __device__ __forceinline__ void fwht_shfl(float* v, int lane) {
#pragma unroll
    for (int m = 1; m < L; m <<= 1) {
        // lower lane: v + o; upper lane: o - v, as one exactly rounded fma(±1, v, o)
        const float sg = (lane & m) ? -1.0f : 1.0f;
#pragma unroll
        for (int i = 0; i < E; ++i) {
            float o = __shfl_xor_sync(0xffffffffu, v[i], m);
            v[i] = fmaf(sg, v[i], o);
        }
    }
}

// One block of TQ_P floats in shared memory, transformed by one warp: registers (E per lane),
// then shuffles, then shared-memory stages for spans of 32*E and more.
__device__ void fwht_smem(float* s, int lane) {
    __syncwarp();
#if TQ_P >= 32
    constexpr int E = (TQ_P / 32) < 32 ? (TQ_P / 32) : 32;
    constexpr int CH = 32 * E;
    for (int c = 0; c < TQ_P; c += CH) {
        float v[E];
#pragma unroll
        for (int k = 0; k < E; ++k) v[k] = s[c + lane * E + k];
        fwht_reg<E>(v);
        fwht_shfl<E, 32>(v, lane);
        if (CH == TQ_P) {
#pragma unroll
            for (int k = 0; k < E; ++k) v[k] *= TQ_SCALE;
        }
#pragma unroll
        for (int k = 0; k < E; ++k) s[c + lane * E + k] = v[k];
    }
    __syncwarp();
    if (CH < TQ_P) {
        for (int h = CH; h < TQ_P; h <<= 1) {
            for (int b = lane; b < TQ_P / 2; b += 32) {
                int i = (b / h) * 2 * h + (b % h);
                float a = s[i], c2 = s[i + h];
                s[i] = a + c2;
                s[i + h] = a - c2;
            }
            __syncwarp();
        }
        for (int i = lane; i < TQ_P; i += 32) s[i] *= TQ_SCALE;
        __syncwarp();
    }
#else
    for (int h = 1; h < TQ_P; h <<= 1) {
        for (int b = lane; b < TQ_P / 2; b += 32) {
            int i = (b / h) * 2 * h + (b % h);
            float a = s[i], c2 = s[i + h];
            s[i] = a + c2;
            s[i + h] = a - c2;
        }
        __syncwarp();
    }
    if (TQ_P > 1) {
        for (int i = lane; i < TQ_P; i += 32) s[i] *= TQ_SCALE;
    }
    __syncwarp();
#endif
}

__device__ __forceinline__ void mul_signs(float* s, const float* sg, int lane) {
    __syncwarp();
    for (int i = lane; i < TQ_D; i += 32) s[i] *= sg[i];
    __syncwarp();
}

// x <- R x for one vector in shared memory `s` (scratch `t`, both TQ_D floats), one warp.
// Returns the buffer holding the result (s or t).
__device__ float* rotate_fwd_smem(float* s, float* t, const float* signs, const int* perms,
                                  int lane) {
    for (int r = 0; r < TQ_ROUNDS; ++r) {
        const float* sg = signs + r * TQ_D;
#if TQ_LAYOUT == 2
        const int* pm = perms + (r - TQ_FIRST_PERM) * TQ_D;
        mul_signs(s, sg, lane);
        fwht_smem(s, lane);
        for (int i = lane; i < TQ_D; i += 32) t[i] = s[pm[i]];
        __syncwarp();
        tq_swap(s, t);
        fwht_smem(s + (TQ_D - TQ_P), lane);
#else
        if (r >= TQ_FIRST_PERM) {
            const int* pm = perms + (r - TQ_FIRST_PERM) * TQ_D;
            __syncwarp();
            for (int i = lane; i < TQ_D; i += 32) t[i] = s[pm[i]];
            __syncwarp();
            tq_swap(s, t);
        }
        mul_signs(s, sg, lane);
        for (int c = 0; c < TQ_D; c += TQ_P) fwht_smem(s + c, lane);
#endif
    }
    __syncwarp();
    return s;
}

// x <- R^T x (the inverse), same conventions.
__device__ float* rotate_inv_smem(float* s, float* t, const float* signs, const int* perms,
                                  int lane) {
    for (int r = TQ_ROUNDS - 1; r >= 0; --r) {
        const float* sg = signs + r * TQ_D;
#if TQ_LAYOUT == 2
        const int* pm = perms + (r - TQ_FIRST_PERM) * TQ_D;
        fwht_smem(s + (TQ_D - TQ_P), lane);
        for (int i = lane; i < TQ_D; i += 32) t[pm[i]] = s[i];
        __syncwarp();
        tq_swap(s, t);
        fwht_smem(s, lane);
        mul_signs(s, sg, lane);
#else
        for (int c = 0; c < TQ_D; c += TQ_P) fwht_smem(s + c, lane);
        mul_signs(s, sg, lane);
        if (r >= TQ_FIRST_PERM) {
            const int* pm = perms + (r - TQ_FIRST_PERM) * TQ_D;
            for (int i = lane; i < TQ_D; i += 32) t[pm[i]] = s[i];
            __syncwarp();
            tq_swap(s, t);
        }
#endif
    }
    __syncwarp();
    return s;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, m));
    return v;
}

// ---------------------------------------------------------------------------------------------
// Rotation of rows (any layout). One warp per row, the row in shared memory.
// Traffic: N*D elements read, N*D float32 written; tables are L1/L2 resident.
extern "C" __global__ void tq_rotate(const elem_t* __restrict__ x, float* __restrict__ out,
                                     long long n_rows, const float* __restrict__ signs,
                                     const int* __restrict__ perms, int inverse, float mult) {
    extern __shared__ float smem[];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    float* s = smem + w * 2 * TQ_D;
    float* t = s + TQ_D;
    const long long nw = (long long)gridDim.x * (blockDim.x >> 5);
    for (long long row = (long long)blockIdx.x * (blockDim.x >> 5) + w; row < n_rows; row += nw) {
        for (int i = lane; i < TQ_D; i += 32) s[i] = to_f(x[row * TQ_D + i]);
        __syncwarp();
        float* res = inverse ? rotate_inv_smem(s, t, signs, perms, lane)
                             : rotate_fwd_smem(s, t, signs, perms, lane);
        for (int i = lane; i < TQ_D; i += 32) out[row * TQ_D + i] = res[i] * mult;
        __syncwarp();
    }
}

// ---------------------------------------------------------------------------------------------
// Quantize. Codebook tables are staged in shared memory: centroids (2^bits), boundaries, and
// for bits <= 4 the cell index (cells.rs): code = below[g] + (inside[g] < y).

struct CodeTables {
    float cent[256];
    float bound[256];
    int below[32];
    float inside[32];
    float offset, inv_width;
};

__device__ void load_code_tables(CodeTables& ct, const float* cent, const float* bound,
                                 const int* below, const float* inside, float offset,
                                 float inv_width) {
    constexpr int K = 1 << TQ_BITS;
    for (int i = threadIdx.x; i < K; i += blockDim.x) ct.cent[i] = cent[i];
    for (int i = threadIdx.x; i < K - 1; i += blockDim.x) ct.bound[i] = bound[i];
#if TQ_CELLS
    for (int i = threadIdx.x; i < 32; i += blockDim.x) {
        ct.below[i] = below[i];
        ct.inside[i] = inside[i];
    }
#endif
    if (threadIdx.x == 0) {
        ct.offset = offset;
        ct.inv_width = inv_width;
    }
    __syncthreads();
}

// Code of a unit-scale coordinate: the number of boundaries strictly below y.
__device__ __forceinline__ int encode_one(const CodeTables& ct, float y) {
#if TQ_CELLS
    float u = fmaf(y, ct.inv_width, ct.offset);
    u = fminf(fmaxf(u, 0.0f), 31.0f);
    int g = (int)u;
    return ct.below[g] + (ct.inside[g] < y ? 1 : 0);
#else
    constexpr int K = 1 << TQ_BITS;
    int idx = 0;
#pragma unroll
    for (int step = K / 2; step > 0; step >>= 1) {
        if (ct.bound[idx + step - 1] < y) idx += step;
    }
    return idx;
#endif
}

// The scale rule of quantizer.rs encode_block ("lsq"): ||x||*<y, c>/||c||^2 = dot/sq, falling
// back to the norm for zero vectors or a non-positive dot or sq.
__device__ __forceinline__ float lsq_scale(float norm, float dot, float sq) {
    return (norm == 0.0f || dot <= 0.0f || sq <= 0.0f) ? norm : dot / sq;
}

// Row addressing shared by plain quantize and KV append. Row n of the input is token
// (n % T) of stream n / T (stream = b*H + h); it is written at slot pos[b] + n % T of that
// stream in buffers of capacity S_cap. Plain quantize: T = n_rows, H = 1, S_cap = n_rows,
// pos = null.
__device__ __forceinline__ long long dest_row(long long n, int T, int H, int S_cap,
                                              const int* pos) {
    long long st = n / T;
    int tok = (int)(n - st * T);
    int b = (int)(st / H);
    int p = pos ? pos[b] : 0;
    return st * S_cap + p + tok;
}

__device__ __forceinline__ void store_group(u8* dst, u64 acc) {
    // 8 codes = TQ_BITS bytes at dst (byte aligned)
#if TQ_BITS == 8
    *reinterpret_cast<u64*>(dst) = acc;  // callers guarantee 8-byte alignment at 8 bits
#elif TQ_BITS == 4
    *reinterpret_cast<u32*>(dst) = (u32)acc;
#elif TQ_BITS == 2
    *reinterpret_cast<u16*>(dst) = (u16)acc;
#else
#pragma unroll
    for (int k = 0; k < TQ_BITS; ++k) dst[k] = (u8)(acc >> (8 * k));
#endif
}

// Fast path: single layout, D in {64, 128, 256}. A team of 8 lanes per row, each lane holding
// E = D/8 consecutive coordinates in registers for the whole pipeline (load, mean, norm, every
// round of signs + Hadamard, codebook search, packing); no shared memory for the vector.
// Traffic budget: N*D input elements read once, N*(rb + 4) bytes written: nothing else.
extern "C" __global__ void __launch_bounds__(256)
    tq_quantize_fast(const elem_t* __restrict__ x, long long n_rows, int T, int H, int S_cap,
                     const int* __restrict__ pos, const float* __restrict__ mean,
                     const u32* __restrict__ sign_bits, const float* __restrict__ cent,
                     const float* __restrict__ bound, const int* __restrict__ below,
                     const float* __restrict__ inside, float offset, float inv_width,
                     u8* __restrict__ codes, float* __restrict__ scales,
                     int* __restrict__ bad) {
    constexpr int L = 8;
    constexpr int E = TQ_D / L;
    constexpr int RB = TQ_D * TQ_BITS / 8;
    __shared__ CodeTables ct;
    load_code_tables(ct, cent, bound, below, inside, offset, inv_width);
    const int lane = threadIdx.x & (L - 1);
    const int team_in_warp = (threadIdx.x & 31) >> 3;
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const long long nwarps = ((long long)gridDim.x * blockDim.x) >> 5;
    u32 sb[TQ_ROUNDS];
#pragma unroll
    for (int r = 0; r < TQ_ROUNDS; ++r) sb[r] = sign_bits[r * L + lane];
    for (long long base = warp * 4; base < n_rows; base += nwarps * 4) {
        const long long row = base + team_in_warp;
        const bool valid = row < n_rows;
        float v[E];
        if (valid) {
            const elem_t* src = x + row * TQ_D + lane * E;
            // E * sizeof(elem_t) >= 16 bytes, 16-byte aligned (checked on the host)
            constexpr int NV = E * (int)sizeof(elem_t) / 16;
            const uint4* s4 = reinterpret_cast<const uint4*>(src);
#pragma unroll
            for (int k = 0; k < NV; ++k) {
                uint4 q = __ldg(s4 + k);
                const elem_t* e = reinterpret_cast<const elem_t*>(&q);
                constexpr int PER = 16 / (int)sizeof(elem_t);
#pragma unroll
                for (int j = 0; j < PER; ++j) v[k * PER + j] = to_f(e[j]);
            }
            if (mean) {
                const float* mu = mean + (row / T) * TQ_D + lane * E;
#pragma unroll
                for (int k = 0; k < E; ++k) v[k] -= __ldg(mu + k);
            }
        } else {
#pragma unroll
            for (int k = 0; k < E; ++k) v[k] = 0.0f;
        }
        float nsq = 0.0f;
#pragma unroll
        for (int k = 0; k < E; ++k) nsq = fmaf(v[k], v[k], nsq);
#pragma unroll
        for (int m = 1; m < L; m <<= 1) nsq += __shfl_xor_sync(0xffffffffu, nsq, m);
        const float norm = sqrtf(nsq);
#pragma unroll
        for (int r = 0; r < TQ_ROUNDS; ++r) {
#pragma unroll
            for (int k = 0; k < E; ++k)
                v[k] = __uint_as_float(__float_as_uint(v[k]) ^ (((sb[r] >> k) & 1u) << 31));
            fwht_reg<E>(v);
            fwht_shfl<E, L>(v, lane);
#pragma unroll
            for (int k = 0; k < E; ++k) v[k] *= TQ_SCALE;
        }
        const float inv = norm > 0.0f ? 1.0f / norm : 0.0f;
        float dot = 0.0f, sq = 0.0f;
        u64 acc[E / 8];
#pragma unroll
        for (int g = 0; g < E / 8; ++g) acc[g] = 0;
#pragma unroll
        for (int k = 0; k < E; ++k) {
            const int c = encode_one(ct, v[k] * inv);
            const float val = ct.cent[c];
            dot = fmaf(v[k], val, dot);
            sq = fmaf(val, val, sq);
            acc[k / 8] |= (u64)c << ((k % 8) * TQ_BITS);
        }
#pragma unroll
        for (int m = 1; m < L; m <<= 1) {
            dot += __shfl_xor_sync(0xffffffffu, dot, m);
            sq += __shfl_xor_sync(0xffffffffu, sq, m);
        }
        if (valid) {
            const long long dr = dest_row(row, T, H, S_cap, pos);
            u8* dst = codes + dr * RB + lane * (E / 8) * TQ_BITS;
#pragma unroll
            for (int g = 0; g < E / 8; ++g) store_group(dst + g * TQ_BITS, acc[g]);
            if (lane == 0) {
                scales[dr] = lsq_scale(norm, dot, sq);
                if (!(norm <= 3.0e38f) && bad) *bad = 1;
            }
        }
    }
}

// General path: any D and layout. One warp per row, the row in shared memory (2*D floats per
// warp), codes staged as bytes, then packed byte by byte.
// Traffic budget: N*D input elements read once, N*(rb + 4) bytes written; the rest is on chip.
extern "C" __global__ void tq_quantize_gen(const elem_t* __restrict__ x, long long n_rows, int T,
                                           int H, int S_cap, const int* __restrict__ pos,
                                           const float* __restrict__ mean,
                                           const float* __restrict__ signs,
                                           const int* __restrict__ perms,
                                           const float* __restrict__ cent,
                                           const float* __restrict__ bound,
                                           const int* __restrict__ below,
                                           const float* __restrict__ inside, float offset,
                                           float inv_width, u8* __restrict__ codes,
                                           float* __restrict__ scales, int* __restrict__ bad) {
    constexpr int RB = (TQ_D * TQ_BITS + 7) / 8;
    __shared__ CodeTables ct;
    load_code_tables(ct, cent, bound, below, inside, offset, inv_width);
    extern __shared__ float smem[];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    float* s = smem + w * 2 * TQ_D;
    float* t = s + TQ_D;
    u8* cs = reinterpret_cast<u8*>(smem + (blockDim.x >> 5) * 2 * TQ_D) + w * ((TQ_D + 15) & ~15);
    const long long nw = (long long)gridDim.x * (blockDim.x >> 5);
    for (long long row = (long long)blockIdx.x * (blockDim.x >> 5) + w; row < n_rows; row += nw) {
        float nsq = 0.0f;
        const float* mu = mean ? mean + (row / T) * TQ_D : nullptr;
        for (int i = lane; i < TQ_D; i += 32) {
            float v = to_f(x[row * TQ_D + i]);
            if (mu) v -= mu[i];
            s[i] = v;
            nsq = fmaf(v, v, nsq);
        }
        nsq = warp_sum(nsq);
        const float norm = sqrtf(nsq);
        __syncwarp();
        float* res = rotate_fwd_smem(s, t, signs, perms, lane);
        const float inv = norm > 0.0f ? 1.0f / norm : 0.0f;
        float dot = 0.0f, sq = 0.0f;
        for (int i = lane; i < TQ_D; i += 32) {
            const float v = res[i];
            const int c = encode_one(ct, v * inv);
            const float val = ct.cent[c];
            dot = fmaf(v, val, dot);
            sq = fmaf(val, val, sq);
            cs[i] = (u8)c;
        }
        dot = warp_sum(dot);
        sq = warp_sum(sq);
        __syncwarp();
        const long long dr = dest_row(row, T, H, S_cap, pos);
        u8* dst = codes + dr * RB;
        for (int k = lane; k < RB; k += 32) {
            u32 byte = 0;
            const int lo = 8 * k;
            for (int j = lo / TQ_BITS; j < TQ_D && j * TQ_BITS < lo + 8; ++j) {
                const int sh = j * TQ_BITS - lo;
                const u32 c = cs[j];
                byte |= sh >= 0 ? (c << sh) : (c >> (-sh));
            }
            dst[k] = (u8)(byte & 0xffu);
        }
        if (lane == 0) {
            scales[dr] = lsq_scale(norm, dot, sq);
            if (!(norm <= 3.0e38f) && bad) *bad = 1;
        }
        __syncwarp();
    }
}

// Dequantize rows: centroid * scale, inverse rotation, + mean; one warp per row.
// Traffic budget: N*(rb + 4) bytes read, N*D output elements written.
extern "C" __global__ void tq_dequantize(const u8* __restrict__ codes,
                                         const float* __restrict__ scales, long long n_rows,
                                         int T, const float* __restrict__ mean,
                                         const float* __restrict__ signs,
                                         const int* __restrict__ perms,
                                         const float* __restrict__ cent,
                                         elem_t* __restrict__ out) {
    constexpr int RB = (TQ_D * TQ_BITS + 7) / 8;
    constexpr int K = 1 << TQ_BITS;
    __shared__ float sc[256];
    for (int i = threadIdx.x; i < K; i += blockDim.x) sc[i] = cent[i];
    __syncthreads();
    extern __shared__ float smem[];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    float* s = smem + w * 2 * TQ_D;
    float* t = s + TQ_D;
    const long long nw = (long long)gridDim.x * (blockDim.x >> 5);
    for (long long row = (long long)blockIdx.x * (blockDim.x >> 5) + w; row < n_rows; row += nw) {
        const u8* src = codes + row * RB;
        const float scale = scales[row];
        for (int i = lane; i < TQ_D; i += 32) {
            const int bit = i * TQ_BITS;
            u32 v = src[bit >> 3];
            if ((bit & 7) + TQ_BITS > 8) v |= (u32)src[(bit >> 3) + 1] << 8;
            const int c = (v >> (bit & 7)) & (K - 1);
            s[i] = scale * sc[c];
        }
        __syncwarp();
        float* res = rotate_inv_smem(s, t, signs, perms, lane);
        const float* mu = mean ? mean + (row / T) * TQ_D : nullptr;
        for (int i = lane; i < TQ_D; i += 32) {
            float v = res[i];
            if (mu) v += mu[i];
            out[row * TQ_D + i] = from_f(v);
        }
        __syncwarp();
    }
}

#if TQ_WITH_ATTN
// ---------------------------------------------------------------------------------------------
// Decode attention from packed K/V.
//
// Per block: one (batch b, KV head h, group of TQ_RG query rows, split of the sequence). The
// query rows of a KV head are its G query heads times q_len queries (row = g*Lq + i), so each
// KV head's codes are read once for up to TQ_RG rows. Tiles of 128 tokens are copied into
// shared memory (cp.async), then
//   phase A (one thread per token): scores from the key codes against the rotated queries;
//   online-softmax bookkeeping per row (max, rescale, sum) in f32;
//   phase B (teams of D/8 threads, 8 dims each): value centroids times p*scale accumulated in
//   the rotated domain.
// The split's partial (max, sum, accumulator) goes to global memory; tq_attn_reduce merges the
// splits, rotates the value sum back once per output row and joins the full-precision segment.
// Traffic budget: each code byte and scale of the (b, h) stream read once per row group
// (once for q_len*G <= TQ_RG), partials are O(splits*rows*D) floats.

#ifndef TQ_KB
#define TQ_KB 4
#endif
#ifndef TQ_VB
#define TQ_VB 4
#endif
#ifndef TQ_RG
#define TQ_RG 4
#endif

#define TQ_TILE 128
#define TQ_THREADS 128

constexpr int tq_rb(int bits) { return (TQ_D * bits + 7) / 8; }
// access width for reading a chunk of 32 codes (bits words) from shared memory
constexpr int tq_aw(int bits) { return (bits % 4 == 0) ? 16 : ((bits % 2 == 0) ? 8 : 4); }
// row bytes rounded to whole 32-code chunks (partial last chunk readable)
constexpr int tq_rbp(int bits) { return ((TQ_D + 31) / 32) * 4 * bits; }
// shared-memory row stride: an odd multiple of the access width (bank-conflict free)
constexpr int tq_stride(int bits) {
    return ((tq_rbp(bits) / tq_aw(bits)) % 2 == 1) ? tq_rbp(bits) : tq_rbp(bits) + tq_aw(bits);
}
constexpr int tq_gcd(int a, int b) { return b == 0 ? a : tq_gcd(b, a % b); }
// global -> shared copy unit (16, 8, 4 or 1 bytes)
constexpr int tq_cu(int bits) {
    return (tq_gcd(tq_rb(bits), tq_stride(bits)) % 16 == 0)  ? 16
           : (tq_gcd(tq_rb(bits), tq_stride(bits)) % 8 == 0) ? 8
           : (tq_gcd(tq_rb(bits), tq_stride(bits)) % 4 == 0) ? 4
                                                              : 1;
}

constexpr int KRB = tq_rb(TQ_KB), VRB = tq_rb(TQ_VB);
constexpr int KSTR = tq_stride(TQ_KB), VSTR = tq_stride(TQ_VB);
constexpr int KCU = tq_cu(TQ_KB), VCU = tq_cu(TQ_VB);

__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 r;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
    return r;
}

template <int CU> __device__ __forceinline__ void copy_piece(void* dst, const void* src) {
    if (CU == 16) {
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst)),
                     "l"(src));
    } else if (CU == 8) {
        asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(smem_addr(dst)), "l"(src));
    } else if (CU == 4) {
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_addr(dst)), "l"(src));
    } else {
        *reinterpret_cast<u8*>(dst) = *reinterpret_cast<const u8*>(src);
    }
}
__device__ __forceinline__ void cp_commit_wait() {
    asm volatile("cp.async.commit_group;\n" ::);
    asm volatile("cp.async.wait_group 0;\n" ::);
}

// Copy `n` rows of RB bytes (contiguous in global) into shared rows of STR bytes.
template <int RB, int STR, int CU>
__device__ __forceinline__ void copy_rows(u8* dst, const u8* src, int n) {
    constexpr int PR = RB / CU;  // pieces per row
    const int total = n * PR;
    for (int p = threadIdx.x; p < total; p += TQ_THREADS) {
        const int r = p / PR, c = p - r * PR;
        copy_piece<CU>(dst + r * STR + c * CU, src + (long long)r * RB + c * CU);
    }
}

// Extract code j (compile-time position) of a chunk of 32 codes held in `w` (BITS words).
template <int BITS> __device__ __forceinline__ int chunk_code(const u32* w, int j) {
    const int bit = j * BITS;
    const int wi = bit >> 5, sh = bit & 31;
    u32 v;
    if (sh + BITS <= 32) {
        v = w[wi] >> sh;
    } else {
        v = __funnelshift_r(w[wi], w[wi + 1], sh);
    }
    return (int)(v & ((1u << BITS) - 1u));
}

template <int BITS> __device__ __forceinline__ void load_chunk(u32* w, const u8* p) {
    if (BITS % 4 == 0) {
#pragma unroll
        for (int k = 0; k < BITS; k += 4) {
            uint4 q = *reinterpret_cast<const uint4*>(p + 4 * k);
            w[k] = q.x;
            w[k + 1] = q.y;
            w[k + 2] = q.z;
            w[k + 3] = q.w;
        }
    } else if (BITS % 2 == 0) {
#pragma unroll
        for (int k = 0; k < BITS; k += 2) {
            uint2 q = *reinterpret_cast<const uint2*>(p + 4 * k);
            w[k] = q.x;
            w[k + 1] = q.y;
        }
    } else {
#pragma unroll
        for (int k = 0; k < BITS; ++k) w[k] = *reinterpret_cast<const u32*>(p + 4 * k);
    }
}

// 8 codes of BITS bits starting at byte j*BITS of a shared row (4-byte aligned row start).
template <int BITS> __device__ __forceinline__ u64 load8(const u8* row, int j) {
    if (BITS == 4) return *reinterpret_cast<const u32*>(row + 4 * j);
    if (BITS == 8) return *reinterpret_cast<const u64*>(row + 8 * j);
    if (BITS == 2) return *reinterpret_cast<const u16*>(row + 2 * j);
    if (BITS == 1) return row[j];
    const int byte = j * BITS;
    const u32* w = reinterpret_cast<const u32*>(row + (byte & ~3));
    const int sh = (byte & 3) * 8;
    u64 lo = (u64)w[0] | ((u64)w[1] << 32);
    u64 v = lo >> sh;
    if (sh + 8 * BITS > 64) v |= (u64)w[2] << (64 - sh);
    return v;
}

struct AttnParams {
    int Hq, Hkv, Lq, S_cap, E_cap, tps, nsplit, window, nrg;
    float softcap;
};

// Softmax bookkeeping shared by the code and full-precision segments: after a tile's scores
// are in `sc` (one token per thread), update the running max, rescale factors, p*vscale.
struct SoftState {
    float m_run[TQ_RG];
    float alpha[TQ_RG];
    float wmax[TQ_THREADS / 32][TQ_RG];
    float l_red[TQ_RG];
};

__device__ __forceinline__ void softmax_tile(SoftState& ss, const float* sc, float vsc,
                                             float* l_part, float* Pt) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int r = 0; r < TQ_RG; ++r) {
        float m = warp_max(sc[r]);
        if (lane == 0) ss.wmax[warp][r] = m;
    }
    __syncthreads();
    if (threadIdx.x < TQ_RG) {
        const int r = threadIdx.x;
        float m = ss.m_run[r];
#pragma unroll
        for (int w = 0; w < TQ_THREADS / 32; ++w) m = fmaxf(m, ss.wmax[w][r]);
        ss.alpha[r] = (m == -TQ_INF) ? 1.0f : expf(ss.m_run[r] - m);
        ss.m_run[r] = m;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < TQ_RG; ++r) {
        const float p = (sc[r] == -TQ_INF) ? 0.0f : expf(sc[r] - ss.m_run[r]);
        l_part[r] = l_part[r] * ss.alpha[r] + p;
        Pt[threadIdx.x * TQ_RG + r] = p * vsc;
    }
    __syncthreads();
}

__device__ __forceinline__ float cap_logit(float s, float softcap) {
    return softcap > 0.0f ? softcap * tanhf(s / softcap) : s;
}

// A block's partial: rows' (m, l) and the accumulators, reduced across threads in shared
// memory: partial_begin zeroes the buffers, the caller adds its accumulators into `red`
// (red[r * D + d]), partial_end sums l and writes everything out.
__device__ __forceinline__ void partial_begin(SoftState& ss, float* red) {
    for (int i = threadIdx.x; i < TQ_RG * TQ_D; i += TQ_THREADS) red[i] = 0.0f;
    if (threadIdx.x < TQ_RG) ss.l_red[threadIdx.x] = 0.0f;
    __syncthreads();
}

__device__ __forceinline__ void partial_end(SoftState& ss, const float* red, const float* l_part,
                                            int b, int h, int rg, int slot, const AttnParams& ap,
                                            float* part_acc, float* part_ml) {
    const int G = ap.Hq / ap.Hkv, R = G * ap.Lq;
#pragma unroll
    for (int r = 0; r < TQ_RG; ++r) {
        float l = warp_sum(l_part[r]);
        if ((threadIdx.x & 31) == 0) atomicAdd(&ss.l_red[r], l);
    }
    __syncthreads();
    for (int r = 0; r < TQ_RG; ++r) {
        const int row = rg * TQ_RG + r;
        if (row >= R) break;
        const int g = row / ap.Lq, i = row - g * ap.Lq;
        const long long qrow = ((long long)b * ap.Hq + h * G + g) * ap.Lq + i;
        const long long base = qrow * (ap.nsplit + 1) + slot;
        for (int d = threadIdx.x; d < TQ_D; d += TQ_THREADS)
            part_acc[base * TQ_D + d] = red[r * TQ_D + d];
        if (threadIdx.x == 0) {
            part_ml[base * 2] = ss.m_run[r];
            part_ml[base * 2 + 1] = ss.l_red[r];
        }
    }
}

__device__ __forceinline__ void write_partial(SoftState& ss, float* red, const float acc[TQ_RG][8],
                                              const float* l_part, int team_lane, int team_ok,
                                              int b, int h, int rg, int slot,
                                              const AttnParams& ap, float* part_acc,
                                              float* part_ml) {
    partial_begin(ss, red);
    if (team_ok) {
#pragma unroll
        for (int r = 0; r < TQ_RG; ++r)
#pragma unroll
            for (int k = 0; k < 8; ++k) atomicAdd(&red[r * TQ_D + team_lane * 8 + k], acc[r][k]);
    }
    partial_end(ss, red, l_part, b, h, rg, slot, ap, part_acc, part_ml);
}

// ---- tensor-core helpers (mma.sync m16n8k16, f16 in, f32 accumulate). Operands are split
// into a high and a low f16 part (v = hi + lo), and three products hi*hi + lo*hi + hi*lo are
// accumulated, so the result keeps about 21 bits: f32-grade scores from f16 tensor cores.

__device__ __forceinline__ void mma16816(float* c, const u32* a, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// f16x2 with `lo` in the low half (the lower column index of a fragment pair)
__device__ __forceinline__ u32 pack_h2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// hi/lo f16 split of two floats into two f16x2 words
__device__ __forceinline__ void split_h2(float x0, float x1, u32& hi, u32& lo) {
    const u16 h0 = f2h(x0), h1 = f2h(x1);
    hi = (u32)h0 | ((u32)h1 << 16);
    lo = pack_h2(x0 - h2f(h0), x1 - h2f(h1));
}

// centroid table entry: f16 hi part in the low half, f16 lo part in the high half
__device__ __forceinline__ u32 cent_entry(float c) {
    const u16 h = f2h(c);
    const u16 l = f2h(c - h2f(h));
    return (u32)h | ((u32)l << 16);
}

// code of coordinate d of a shared row (any width; the row is 4-byte aligned)
template <int BITS> __device__ __forceinline__ int code_at(const u8* row, int d) {
    constexpr u32 M = (1u << BITS) - 1u;
    if (BITS == 8) return row[d];
    if (BITS == 4 || BITS == 2 || BITS == 1) {
        const int bit = d * BITS;
        return (int)(((u32)row[bit >> 3] >> (bit & 7)) & M);
    }
    const int bit = d * BITS;
    const u32* w = reinterpret_cast<const u32*>(row) + (bit >> 5);
    return (int)(__funnelshift_r(w[0], w[1], bit & 31) & M);
}

// codes of coordinates d and d + 1 (d even)
template <int BITS> __device__ __forceinline__ void pair_at(const u8* row, int d, int& c0, int& c1) {
    constexpr u32 M = (1u << BITS) - 1u;
    if (BITS == 8) {
        c0 = row[d];
        c1 = row[d + 1];
    } else if (BITS == 4 || BITS == 2 || BITS == 1) {
        const int bit = d * BITS;
        const u32 v = (u32)row[bit >> 3] >> (bit & 7);
        c0 = (int)(v & M);
        c1 = (int)((v >> BITS) & M);
    } else {
        const int bit = d * BITS;
        const u32* w = reinterpret_cast<const u32*>(row) + (bit >> 5);
        const u32 v = __funnelshift_r(w[0], w[1], bit & 31);
        c0 = (int)(v & M);
        c1 = (int)((v >> BITS) & M);
    }
}

// A-fragment words (hi, lo) for two codes via the centroid table
__device__ __forceinline__ void frag_pair(const u32* tab, int c0, int c1, u32& hi, u32& lo) {
    const u32 e0 = tab[c0], e1 = tab[c1];
    hi = __byte_perm(e0, e1, 0x5410);
    lo = __byte_perm(e0, e1, 0x7632);
}

// Shared layout of the attention kernels (dynamic shared memory).
template <int NB> struct AttnSmemT {
    alignas(16) float q[TQ_D * TQ_RG];  // q[d * RG + r]
    float qm[TQ_RG];
    int qpos[TQ_RG];
    float kcent[1 << TQ_KB];
    float vcent[1 << TQ_VB];
    float ks[NB][TQ_TILE];
    float vs[NB][TQ_TILE];
    alignas(16) float P[TQ_TILE * TQ_RG];
    SoftState ss;
    float red[TQ_RG * TQ_D];
    alignas(16) u8 kt[NB][TQ_TILE * KSTR];  // NB = 2: double-buffered tiles
    alignas(16) u8 vt[NB][TQ_TILE * VSTR];
    u32 kth[1 << TQ_KB];  // tensor-core centroid tables (hi | lo << 16)
    u32 vth[1 << TQ_VB];
    u8 pad[16];  // the last row's funnel-shift read may touch 4 bytes past it
};

using AttnSmem = AttnSmemT<1>;

template <int N> __device__ __forceinline__ void cp_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

template <bool TC, int NB>
__device__ __forceinline__ void attn_codes_body(const float* __restrict__ qr, const float* __restrict__ qm,
                  const u8* __restrict__ kc, const float* __restrict__ ks,
                  const u8* __restrict__ vc, const float* __restrict__ vs,
                  const float* __restrict__ kcent, const float* __restrict__ vcent,
                  const int* __restrict__ clen, const int* __restrict__ elen,
                  const int* __restrict__ cstart, int Hq, int Hkv,
                  int Lq, int S_cap, int E_cap, int tps, int nsplit, int window, int nrg,
                  float softcap, float* __restrict__ part_acc, float* __restrict__ part_ml) {
    const AttnParams ap{Hq, Hkv, Lq, S_cap, E_cap, tps, nsplit, window, nrg, softcap};
    extern __shared__ __align__(16) u8 smem_raw[];
    AttnSmemT<NB>& sm = *reinterpret_cast<AttnSmemT<NB>*>(smem_raw);
    const int split = blockIdx.x;
    const int h = blockIdx.y / ap.nrg, rg = blockIdx.y - h * ap.nrg;
    const int b = blockIdx.z;
    const int G = ap.Hq / ap.Hkv, R = G * ap.Lq;
    const int tid = threadIdx.x;
    const int cl = clen[b];
    const int total = cl + (elen ? elen[b] : 0);
    const int cs = cstart ? cstart[b] : 0;  // first valid position (left padding)

    for (int i = tid; i < (1 << TQ_KB); i += TQ_THREADS) {
        sm.kcent[i] = kcent[i];
        sm.kth[i] = cent_entry(kcent[i]);
    }
    for (int i = tid; i < (1 << TQ_VB); i += TQ_THREADS) {
        sm.vcent[i] = vcent[i];
        sm.vth[i] = cent_entry(vcent[i]);
    }
    int min_pos = 0x7fffffff;
    for (int r = 0; r < TQ_RG; ++r) {
        const int row = rg * TQ_RG + r;
        const bool ok = row < R;
        const int g = ok ? row / ap.Lq : 0, i = ok ? row - g * ap.Lq : 0;
        const long long qrow = ((long long)b * ap.Hq + h * G + g) * ap.Lq + i;
        for (int d = tid; d < TQ_D; d += TQ_THREADS) sm.q[d * TQ_RG + r] = ok ? qr[qrow * TQ_D + d] : 0.0f;
        if (tid == 0) {
            sm.qm[r] = (ok && qm) ? qm[qrow] : 0.0f;
            sm.qpos[r] = ok ? total - ap.Lq + i : -1;
            sm.ss.m_run[r] = -TQ_INF;
        }
        if (ok) min_pos = min(min_pos, total - ap.Lq + i);
    }
    // tokens of this split, clipped to the stored length and the sliding window
    int t_lo = split * ap.tps;
    const int t_hi = min(t_lo + ap.tps, cl);
    if (ap.window > 0) {
        const int lo = min_pos - ap.window + 1;
        if (lo > t_lo) t_lo = t_lo + ((lo - t_lo) / TQ_TILE) * TQ_TILE;
    }
    if (cs > t_lo) t_lo = t_lo + ((cs - t_lo) / TQ_TILE) * TQ_TILE;
    __syncthreads();

    float l_part[TQ_RG];
    float acc[TQ_RG][8];
#pragma unroll
    for (int r = 0; r < TQ_RG; ++r) {
        l_part[r] = 0.0f;
#pragma unroll
        for (int k = 0; k < 8; ++k) acc[r][k] = 0.0f;
    }
    constexpr int TW = TQ_D / 8;               // team width (threads per token in phase B)
    constexpr int NT = TQ_THREADS / TW;        // teams
    const int team = tid / TW, tl = tid - team * TW;
    const bool team_ok = team < NT;

    // tensor-core state: the query rows as B fragments (hi/lo), value accumulators per m-tile
    constexpr int NCH = TQ_D / 16;                    // 16-dim chunks
    constexpr int MTW = (NCH + 3) / 4;                // value m-tiles per warp
    const int lane = tid & 31, warp = tid >> 5;
    const int fg = lane >> 2, ft = lane & 3;          // fragment group / thread in group
    u32 qbh[TC ? NCH : 1][2], qbl[TC ? NCH : 1][2];
    float accv[TC ? MTW : 1][4];
    if constexpr (TC) {
#pragma unroll
        for (int c = 0; c < NCH; ++c) {
            const int d0 = c * 16 + ft * 2;
            float q0 = 0, q1 = 0, q2 = 0, q3 = 0;
            if (fg < TQ_RG) {
                q0 = sm.q[d0 * TQ_RG + fg];
                q1 = sm.q[(d0 + 1) * TQ_RG + fg];
                q2 = sm.q[(d0 + 8) * TQ_RG + fg];
                q3 = sm.q[(d0 + 9) * TQ_RG + fg];
            }
            split_h2(q0, q1, qbh[c][0], qbl[c][0]);
            split_h2(q2, q3, qbh[c][1], qbl[c][1]);
        }
#pragma unroll
        for (int i = 0; i < MTW; ++i)
#pragma unroll
            for (int k = 0; k < 4; ++k) accv[i][k] = 0.0f;
    }

    const long long stream = (long long)b * ap.Hkv + h;
    // issue the copies of the tile at t0b into buffer bi (cp.async, one commit group)
    auto issue = [&](int t0b, int bi) {
        const int nb = min(TQ_TILE, ap.S_cap - t0b);
        copy_rows<KRB, KSTR, KCU>(sm.kt[bi], kc + (stream * ap.S_cap + t0b) * KRB, nb);
        copy_rows<VRB, VSTR, VCU>(sm.vt[bi], vc + (stream * ap.S_cap + t0b) * VRB, nb);
        if (tid < nb) {
            copy_piece<4>(&sm.ks[bi][tid], ks + stream * ap.S_cap + t0b + tid);
            copy_piece<4>(&sm.vs[bi][tid], vs + stream * ap.S_cap + t0b + tid);
        }
        asm volatile("cp.async.commit_group;\n" ::);
    };
    int buf = 0;
    if (NB == 2 && t_lo < t_hi) issue(t_lo, 0);
    for (int t0 = t_lo; t0 < t_hi; t0 += TQ_TILE) {
        const int n = min(TQ_TILE, ap.S_cap - t0);
        if (NB == 2) {
            // prefetch the next tile into the other buffer while this one is computed
            if (t0 + TQ_TILE < t_hi) {
                issue(t0 + TQ_TILE, buf ^ 1);
                cp_wait<1>();
            } else {
                cp_wait<0>();
            }
        } else {
            issue(t0, 0);
            cp_wait<0>();
        }
        __syncthreads();
        const u8* kt = sm.kt[NB == 2 ? buf : 0];
        const u8* vt = sm.vt[NB == 2 ? buf : 0];
        const float* kss = sm.ks[NB == 2 ? buf : 0];
        const float* vss = sm.vs[NB == 2 ? buf : 0];

        // phase A: scores, one token per thread
        const int t = t0 + tid;
        float sc[TQ_RG];
        {
            float dot[TQ_RG];
#pragma unroll
            for (int r = 0; r < TQ_RG; ++r) dot[r] = 0.0f;
            const u8* row = kt + tid * KSTR;
            if constexpr (TC) {
                // scores^T = K Q^T: M = 16 tokens, N = 8 query rows, K = 16 dims per mma
#pragma unroll
                for (int m = 0; m < 2; ++m) {
                    const int tA = warp * 32 + m * 16 + fg, tB = tA + 8;
                    const u8* rA = kt + tA * KSTR;
                    const u8* rB = kt + tB * KSTR;
                    float c4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
                    for (int c = 0; c < NCH; ++c) {
                        const int d0 = c * 16 + ft * 2;
                        int x0, x1;
                        u32 ah[4], al[4];
                        pair_at<TQ_KB>(rA, d0, x0, x1);
                        frag_pair(sm.kth, x0, x1, ah[0], al[0]);
                        pair_at<TQ_KB>(rB, d0, x0, x1);
                        frag_pair(sm.kth, x0, x1, ah[1], al[1]);
                        pair_at<TQ_KB>(rA, d0 + 8, x0, x1);
                        frag_pair(sm.kth, x0, x1, ah[2], al[2]);
                        pair_at<TQ_KB>(rB, d0 + 8, x0, x1);
                        frag_pair(sm.kth, x0, x1, ah[3], al[3]);
                        mma16816(c4, ah, qbh[c][0], qbh[c][1]);
                        mma16816(c4, al, qbh[c][0], qbh[c][1]);
                        mma16816(c4, ah, qbl[c][0], qbl[c][1]);
                    }
                    const int r0 = ft * 2;
                    if (r0 < TQ_RG) {
                        sm.P[tA * TQ_RG + r0] = c4[0];
                        sm.P[tB * TQ_RG + r0] = c4[2];
                    }
                    if (r0 + 1 < TQ_RG) {
                        sm.P[tA * TQ_RG + r0 + 1] = c4[1];
                        sm.P[tB * TQ_RG + r0 + 1] = c4[3];
                    }
                }
                __syncwarp();
#pragma unroll
                for (int r = 0; r < TQ_RG; ++r) dot[r] = sm.P[tid * TQ_RG + r];
            } else {
#pragma unroll
            for (int c = 0; c < (TQ_D + 31) / 32; ++c) {
                u32 w[TQ_KB];
                load_chunk<TQ_KB>(w, row + c * 4 * TQ_KB);
#pragma unroll
                for (int j = 0; j < 32; ++j) {
                    const int d = c * 32 + j;
                    if (d < TQ_D) {
                        const float cv = sm.kcent[chunk_code<TQ_KB>(w, j)];
                        const float* qd = &sm.q[d * TQ_RG];
                        if (TQ_RG % 4 == 0) {
#pragma unroll
                            for (int r = 0; r < TQ_RG; r += 4) {
                                const float4 q4 = *reinterpret_cast<const float4*>(qd + r);
                                dot[r] = fmaf(q4.x, cv, dot[r]);
                                dot[r + 1] = fmaf(q4.y, cv, dot[r + 1]);
                                dot[r + 2] = fmaf(q4.z, cv, dot[r + 2]);
                                dot[r + 3] = fmaf(q4.w, cv, dot[r + 3]);
                            }
                        } else {
#pragma unroll
                            for (int r = 0; r < TQ_RG; ++r) dot[r] = fmaf(qd[r], cv, dot[r]);
                        }
                    }
                }
            }
            }
            const bool tok_ok = tid < n && t < t_hi && t >= cs;
            const float kscale = tok_ok ? kss[tid] : 0.0f;
#pragma unroll
            for (int r = 0; r < TQ_RG; ++r) {
                const int qp = sm.qpos[r];
                bool ok = tok_ok && t <= qp && (ap.window <= 0 || t > qp - ap.window);
                sc[r] = ok ? cap_logit(sm.qm[r] + kscale * dot[r], ap.softcap) : -TQ_INF;
            }
        }
        const float vsc = (tid < n && t < t_hi) ? vss[tid] : 0.0f;
        softmax_tile(sm.ss, sc, vsc, l_part, sm.P);

        // phase B: values
        if constexpr (TC) {
            // out^T += V^T P^T: M = 16 dims, N = 8 query rows, K = 16 tokens per mma
            const int r0 = ft * 2;
            const float a0 = r0 < TQ_RG ? sm.ss.alpha[r0] : 0.0f;
            const float a1 = r0 + 1 < TQ_RG ? sm.ss.alpha[r0 + 1] : 0.0f;
#pragma unroll
            for (int i = 0; i < MTW; ++i) {
                accv[i][0] *= a0;
                accv[i][1] *= a1;
                accv[i][2] *= a0;
                accv[i][3] *= a1;
            }
            const int nt = min(n, t_hi - t0);
            for (int kc = 0; kc * 16 < nt; ++kc) {
                const int tk = kc * 16 + ft * 2;
                float p0 = 0, p1 = 0, p2 = 0, p3 = 0;
                if (fg < TQ_RG) {
                    p0 = sm.P[tk * TQ_RG + fg];
                    p1 = sm.P[(tk + 1) * TQ_RG + fg];
                    p2 = sm.P[(tk + 8) * TQ_RG + fg];
                    p3 = sm.P[(tk + 9) * TQ_RG + fg];
                }
                u32 pbh0, pbl0, pbh1, pbl1;
                split_h2(p0, p1, pbh0, pbl0);
                split_h2(p2, p3, pbh1, pbl1);
                const u8* v0 = vt + tk * VSTR;
                const u8* v1 = v0 + VSTR;
                const u8* v8 = v0 + 8 * VSTR;
                const u8* v9 = v0 + 9 * VSTR;
#pragma unroll
                for (int i = 0; i < MTW; ++i) {
                    const int mt = warp + 4 * i;
                    if (mt < NCH) {
                        const int dA = mt * 16 + fg, dB = dA + 8;
                        u32 ah[4], al[4];
                        frag_pair(sm.vth, code_at<TQ_VB>(v0, dA), code_at<TQ_VB>(v1, dA), ah[0], al[0]);
                        frag_pair(sm.vth, code_at<TQ_VB>(v0, dB), code_at<TQ_VB>(v1, dB), ah[1], al[1]);
                        frag_pair(sm.vth, code_at<TQ_VB>(v8, dA), code_at<TQ_VB>(v9, dA), ah[2], al[2]);
                        frag_pair(sm.vth, code_at<TQ_VB>(v8, dB), code_at<TQ_VB>(v9, dB), ah[3], al[3]);
                        mma16816(accv[i], ah, pbh0, pbh1);
                        mma16816(accv[i], al, pbh0, pbh1);
                        mma16816(accv[i], ah, pbl0, pbl1);
                    }
                }
            }
        } else if (team_ok) {
#pragma unroll
            for (int r = 0; r < TQ_RG; ++r) {
                const float a = sm.ss.alpha[r];
#pragma unroll
                for (int k = 0; k < 8; ++k) acc[r][k] *= a;
            }
            const int nt = min(n, t_hi - t0);
            for (int tt = team; tt < nt; tt += NT) {
                const u64 bits = load8<TQ_VB>(vt + tt * VSTR, tl);
                float cv[8];
#pragma unroll
                for (int k = 0; k < 8; ++k)
                    cv[k] = sm.vcent[(int)((bits >> (k * TQ_VB)) & ((1u << TQ_VB) - 1u))];
                const float* pw = &sm.P[tt * TQ_RG];
#pragma unroll
                for (int r = 0; r < TQ_RG; ++r) {
                    const float p = pw[r];
#pragma unroll
                    for (int k = 0; k < 8; ++k) acc[r][k] = fmaf(p, cv[k], acc[r][k]);
                }
            }
        }
        __syncthreads();
        buf ^= 1;
    }
    if constexpr (TC) {
        partial_begin(sm.ss, sm.red);
        const int r0 = ft * 2;
#pragma unroll
        for (int i = 0; i < MTW; ++i) {
            const int mt = warp + 4 * i;
            if (mt < NCH) {
                const int dA = mt * 16 + fg, dB = dA + 8;
                if (r0 < TQ_RG) {
                    sm.red[r0 * TQ_D + dA] = accv[i][0];
                    sm.red[r0 * TQ_D + dB] = accv[i][2];
                }
                if (r0 + 1 < TQ_RG) {
                    sm.red[(r0 + 1) * TQ_D + dA] = accv[i][1];
                    sm.red[(r0 + 1) * TQ_D + dB] = accv[i][3];
                }
            }
        }
        partial_end(sm.ss, sm.red, l_part, b, h, rg, split, ap, part_acc, part_ml);
    } else {
        write_partial(sm.ss, sm.red, acc, l_part, tl, team_ok, b, h, rg, split, ap, part_acc,
                      part_ml);
    }
}

#define TQ_CODES_ARGS                                                                          \
    const float *__restrict__ qr, const float *__restrict__ qm, const u8 *__restrict__ kc,     \
        const float *__restrict__ ks, const u8 *__restrict__ vc, const float *__restrict__ vs, \
        const float *__restrict__ kcent, const float *__restrict__ vcent,                      \
        const int *__restrict__ clen, const int *__restrict__ elen,                            \
        const int *__restrict__ cstart, int Hq, int Hkv, int Lq, int S_cap,                    \
        int E_cap, int tps, int nsplit, int window, int nrg, float softcap,                    \
        float *__restrict__ part_acc, float *__restrict__ part_ml
#define TQ_CODES_PASS                                                                          \
    qr, qm, kc, ks, vc, vs, kcent, vcent, clen, elen, cstart, Hq, Hkv, Lq, S_cap, E_cap, tps,  \
        nsplit,                                                                                \
        window, nrg, softcap, part_acc, part_ml

// CUDA-core variant (f32 FMAs from shared-memory centroids).
extern "C" __global__ void __launch_bounds__(TQ_THREADS) tq_attn_codes(TQ_CODES_ARGS) {
    attn_codes_body<false, 1>(TQ_CODES_PASS);
}

// Tensor-core variant (mma.sync with hi/lo split operands; needs D % 16 == 0 and RG <= 8).
extern "C" __global__ void __launch_bounds__(TQ_THREADS) tq_attn_codes_tc(TQ_CODES_ARGS) {
    attn_codes_body<true, 1>(TQ_CODES_PASS);
}

// Tensor-core variant with double-buffered tiles (the next tile's copy overlaps this one's math).
extern "C" __global__ void __launch_bounds__(TQ_THREADS) tq_attn_codes_tc2(TQ_CODES_ARGS) {
    attn_codes_body<true, 2>(TQ_CODES_PASS);
}

// The full-precision segment (the residual window, input dtype): same softmax, values
// accumulated in the original domain; its partial goes to slot `nsplit` (the last).
// Traffic budget: the segment's K and V elements read once per row group.
extern "C" __global__ void __launch_bounds__(TQ_THREADS)
    tq_attn_extra(const float* __restrict__ qraw, const elem_t* __restrict__ ke,
                  const elem_t* __restrict__ ve, const int* __restrict__ clen,
                  const int* __restrict__ elen, const int* __restrict__ cstart, int Hq, int Hkv, int Lq, int S_cap, int E_cap,
                  int tps, int nsplit, int window, int nrg, float softcap,
                  float* __restrict__ part_acc, float* __restrict__ part_ml) {
    const AttnParams ap{Hq, Hkv, Lq, S_cap, E_cap, tps, nsplit, window, nrg, softcap};
    extern __shared__ __align__(16) u8 smem_raw[];
    AttnSmem& sm = *reinterpret_cast<AttnSmem*>(smem_raw);
    const int h = blockIdx.y / ap.nrg, rg = blockIdx.y - h * ap.nrg;
    const int b = blockIdx.z;
    const int G = ap.Hq / ap.Hkv, R = G * ap.Lq;
    const int tid = threadIdx.x;
    const int cl = clen[b];
    const int el = elen ? elen[b] : 0;
    const int total = cl + el;
    const int cs = cstart ? cstart[b] : 0;  // first valid position (left padding)
    for (int r = 0; r < TQ_RG; ++r) {
        const int row = rg * TQ_RG + r;
        const bool ok = row < R;
        const int g = ok ? row / ap.Lq : 0, i = ok ? row - g * ap.Lq : 0;
        const long long qrow = ((long long)b * ap.Hq + h * G + g) * ap.Lq + i;
        for (int d = tid; d < TQ_D; d += TQ_THREADS) sm.q[d * TQ_RG + r] = ok ? qraw[qrow * TQ_D + d] : 0.0f;
        if (tid == 0) {
            sm.qpos[r] = ok ? total - ap.Lq + i : -1;
            sm.ss.m_run[r] = -TQ_INF;
        }
    }
    __syncthreads();
    float l_part[TQ_RG];
    float acc[TQ_RG][8];
#pragma unroll
    for (int r = 0; r < TQ_RG; ++r) {
        l_part[r] = 0.0f;
#pragma unroll
        for (int k = 0; k < 8; ++k) acc[r][k] = 0.0f;
    }
    constexpr int TW = TQ_D / 8;
    constexpr int NT = TQ_THREADS / TW;
    const int team = tid / TW, tl = tid - team * TW;
    const bool team_ok = team < NT;
    const long long stream = (long long)b * ap.Hkv + h;
    for (int e0 = 0; e0 < el; e0 += TQ_TILE) {
        const int e = e0 + tid;
        const bool tok_ok = e < el;
        float sc[TQ_RG];
        float dot[TQ_RG];
#pragma unroll
        for (int r = 0; r < TQ_RG; ++r) dot[r] = 0.0f;
        if (tok_ok) {
            const elem_t* kr = ke + (stream * ap.E_cap + e) * TQ_D;
            for (int d = 0; d < TQ_D; ++d) {
                const float kv = to_f(kr[d]);
#pragma unroll
                for (int r = 0; r < TQ_RG; ++r) dot[r] = fmaf(sm.q[d * TQ_RG + r], kv, dot[r]);
            }
        }
        const int t = cl + e;  // absolute position
#pragma unroll
        for (int r = 0; r < TQ_RG; ++r) {
            const int qp = sm.qpos[r];
            bool ok = tok_ok && t >= cs && t <= qp && (ap.window <= 0 || t > qp - ap.window);
            sc[r] = ok ? cap_logit(dot[r], ap.softcap) : -TQ_INF;
        }
        softmax_tile(sm.ss, sc, 1.0f, l_part, sm.P);
        if (team_ok) {
#pragma unroll
            for (int r = 0; r < TQ_RG; ++r) {
                const float a = sm.ss.alpha[r];
#pragma unroll
                for (int k = 0; k < 8; ++k) acc[r][k] *= a;
            }
            const int nt = min(TQ_TILE, el - e0);
            for (int tt = team; tt < nt; tt += NT) {
                const elem_t* vr = ve + (stream * ap.E_cap + e0 + tt) * TQ_D + tl * 8;
                float cv[8];
#pragma unroll
                for (int k = 0; k < 8; ++k) cv[k] = to_f(vr[k]);
                const float* pw = &sm.P[tt * TQ_RG];
#pragma unroll
                for (int r = 0; r < TQ_RG; ++r) {
                    const float p = pw[r];
#pragma unroll
                    for (int k = 0; k < 8; ++k) acc[r][k] = fmaf(p, cv[k], acc[r][k]);
                }
            }
        }
        __syncthreads();
    }
    write_partial(sm.ss, sm.red, acc, l_part, tl, team_ok, b, h, rg, ap.nsplit, ap, part_acc,
                  part_ml);
}

// Merge the splits of every query row: the code splits' accumulators (rotated domain) are
// combined and rotated back once; the mean of V is added with the code segment's weight; the
// full-precision segment's accumulator (original domain) joins; divide by the total weight.
// One warp per query row. Traffic: (nsplit + 1) * (D + 2) floats read, D elements written.
extern "C" __global__ void tq_attn_reduce(const float* __restrict__ part_acc,
                                          const float* __restrict__ part_ml, long long n_rows,
                                          int nsplit, int Hq, int Hkv, int Lq, int has_extra,
                                          const float* __restrict__ vmean,
                                          const float* __restrict__ signs,
                                          const int* __restrict__ perms, elem_t* __restrict__ out,
                                          float* __restrict__ lse) {
    extern __shared__ float smem[];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    float* s = smem + w * 2 * TQ_D;
    float* t = s + TQ_D;
    const long long row = (long long)blockIdx.x * (blockDim.x >> 5) + w;
    if (row >= n_rows) return;
    const int ns1 = nsplit + 1;
    const float* ml = part_ml + row * ns1 * 2;
    float M = -TQ_INF;
    const int nlook = has_extra ? ns1 : nsplit;  // slot nsplit is unwritten without a segment
    for (int k = lane; k < nlook; k += 32) M = fmaxf(M, ml[2 * k]);
    M = warp_max(M);
    float Lc = 0.0f;
    for (int k = lane; k < nsplit; k += 32) {
        const float m = ml[2 * k];
        if (m != -TQ_INF) Lc += expf(m - M) * ml[2 * k + 1];
    }
    Lc = warp_sum(Lc);
    const float me = has_extra ? ml[2 * nsplit] : -TQ_INF;
    const float we = (me == -TQ_INF) ? 0.0f : expf(me - M);
    const float Le = we != 0.0f ? we * ml[2 * nsplit + 1] : 0.0f;
    const float* pa = part_acc + row * ns1 * TQ_D;
    for (int d = lane; d < TQ_D; d += 32) {
        float a = 0.0f;
        for (int k = 0; k < nsplit; ++k) {
            const float m = ml[2 * k];
            if (m != -TQ_INF) a = fmaf(expf(m - M), pa[k * TQ_D + d], a);
        }
        s[d] = a;
    }
    __syncwarp();
    float* res = rotate_inv_smem(s, t, signs, perms, lane);
    const float L = Lc + Le;
    const float invL = L > 0.0f ? 1.0f / L : 0.0f;
    const long long bh = row / Lq;  // b * Hq + hq
    const long long b = bh / Hq;
    const int hq = (int)(bh - b * Hq);
    const int hk = hq / (Hq / Hkv);
    const float* mu = vmean ? vmean + (b * Hkv + hk) * TQ_D : nullptr;
    for (int d = lane; d < TQ_D; d += 32) {
        float v = res[d];
        if (mu) v = fmaf(mu[d], Lc, v);
        if (we != 0.0f) v = fmaf(we, pa[nsplit * TQ_D + d], v);
        out[row * TQ_D + d] = from_f(v * invL);
    }
    if (lse && lane == 0) lse[row] = L > 0.0f ? M + logf(L) : -TQ_INF;
}

// sizeof the attention kernels' dynamic shared memory, for the host launcher.
extern "C" __global__ void tq_attn_smem_size(int* out) {
    out[0] = (int)sizeof(AttnSmemT<1>);
    out[1] = (int)sizeof(AttnSmemT<2>);
}
#endif  // TQ_WITH_ATTN
