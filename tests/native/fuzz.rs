//! The fuzzing targets (fuzz/src/lib.rs), replayed on stable: each target on its seeds and on
//! random damage to them (flipped, inserted, deleted and repeated bytes, truncations). libFuzzer
//! explores far more (`bash tools/fuzz.sh`); this keeps every target building and its seeds
//! passing in CI. With SCALEOT_FUZZ_SEEDS=DIR it also writes the seeds there, one folder per
//! target (tools/fuzz.sh's starting corpora).

#[path = "../../fuzz/src/lib.rs"]
mod targets;

use rand::{Rng, SeedableRng, rngs::StdRng};

/// Damaged variants per seed and target.
const MUTATIONS: usize = 400;

fn damaged(seed: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let at = rng.random_range(0..=b.len());
        match rng.random_range(0..6) {
            0 if at < b.len() => b[at] ^= 1 << rng.random_range(0..8),
            1 if at < b.len() => b[at] = [0, 0xff, 0x7f, 0x80][rng.random_range(0..4)],
            2 => b.insert(at, rng.random()),
            3 if at < b.len() => {
                b.remove(at);
            }
            4 => b.truncate(at),
            _ => {
                let end = (at + rng.random_range(1..64)).min(b.len());
                let piece = b[at..end].to_vec();
                b.splice(at..at, piece.iter().cycle().take(piece.len() * 8).copied());
            }
        }
    }
    b
}

#[test]
fn fuzz_targets_survive_their_seeds_and_random_damage() {
    let out = std::env::var_os("SCALEOT_FUZZ_SEEDS").map(std::path::PathBuf::from);
    let mut rng = StdRng::seed_from_u64(16);
    for &(name, target) in targets::TARGETS {
        let seeds = targets::seeds(name);
        assert!(!seeds.is_empty(), "{name} has no seeds");
        if let Some(dir) = &out {
            let dir = dir.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for (i, s) in seeds.iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
            }
        }
        let started = std::time::Instant::now();
        for seed in &seeds {
            assert!(target(seed), "{name} refuses its own seed");
            for _ in 0..MUTATIONS {
                target(&damaged(seed, &mut rng));
            }
        }
        eprintln!(
            "{name}: {} inputs in {:.1} s",
            seeds.len() * (MUTATIONS + 1),
            started.elapsed().as_secs_f64()
        );
    }
}
