//! Native-service use of the search index: build, save, load (memory-mapped), query.
//!
//! ```text
//! cargo run -p turboquant --release --example index_service -- [n] [dim] [bits]
//! ```

use std::time::Instant;
use turboquant::rng::SplitMix64;
use turboquant::search::{Filter, Index, IndexOptions, Metric};

fn main() -> turboquant::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (n, dim, bits) = (
        args.first().copied().unwrap_or(100_000),
        args.get(1).copied().unwrap_or(128),
        args.get(2).copied().unwrap_or(4) as u8,
    );
    let mut rng = SplitMix64::new(42, 0);
    let mut uniform = || (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
    let data: Vec<f32> = (0..n * dim).map(|_| uniform()).collect();

    let t = Instant::now();
    let mut index = Index::new(
        dim,
        IndexOptions {
            bits,
            metric: Metric::Cosine,
            ..Default::default()
        },
    )?;
    let ids = index.add(&data)?;
    println!(
        "added {} vectors in {:.3} s, {} bytes held",
        ids.len(),
        t.elapsed().as_secs_f64(),
        index.memory_bytes()
    );

    index.remove(&ids[..10]);
    let path = std::env::temp_dir().join("turboquant_index_service.tqi");
    index.save(&path)?;
    let loaded = Index::load(&path, true)?;
    println!(
        "saved and mapped back: {} live vectors, mapped = {}",
        loaded.len(),
        loaded.is_mapped()
    );

    let queries = &data[100 * dim..200 * dim];
    let t = Instant::now();
    let hits = loaded.search(queries, 10, &Filter::All)?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "100 queries in {:.2} ms ({:.0} QPS)",
        secs * 1e3,
        100.0 / secs
    );
    let self_hits = (0..100)
        .filter(|&q| hits.ids[q * 10] == ids[100 + q])
        .count();
    println!("{self_hits}/100 queries find themselves first");
    let t = Instant::now();
    for q in queries.chunks_exact(dim) {
        loaded.search(q, 10, &Filter::All)?;
    }
    println!(
        "single-query latency {:.3} ms",
        t.elapsed().as_secs_f64() * 1e3 / 100.0
    );
    let allowed: Vec<u64> = ids.iter().copied().filter(|i| i % 2 == 1).collect();
    let odd = loaded.search(&queries[..dim], 5, &Filter::Ids(&allowed))?;
    println!("odd ids only: {:?}", odd.ids);
    std::fs::remove_file(&path).ok();
    Ok(())
}
