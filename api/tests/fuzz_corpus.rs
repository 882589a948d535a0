//! The fuzz targets' entry points (`scorer_api::fuzzing`) replayed on stable, so `cargo test`
//! runs them without nightly or cargo-fuzz: every seed of `fuzz/corpus/<target>/`, then a fixed
//! number of deterministic mutations of each (bit flips, byte changes, cuts, repeats, splices
//! with other seeds). Nothing may panic; seeds named `valid_*` must parse. A longer, coverage-
//! guided run is `cargo +nightly fuzz run <target>` (docs/TESTING.md).

use std::path::PathBuf;
use std::time::Instant;

use scorer_api::fuzzing;

/// Mutations tried per seed.
const MUTATIONS: usize = 2_000;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read(&path).expect("seed"))
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// xorshift64*: a fixed sequence, so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[&[u8]] = &[
    b"\\u0000",
    b"\\ud800",
    b"1e400",
    b"-1",
    b"18446744073709551616",
    b"null",
    b"[",
    b"{",
    b"\"",
    b"\r\n",
    b"--scorerfuzz",
    b"--scorerfuzz--",
    b"\xff\xfe",
    b"5e-324",
    b"[[[[[[[[",
];

fn mutate(rng: &mut Rng, seed: &[u8], others: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] = rng.next() as u8;
            }
            2 => out.truncate(at),
            3 => {
                let end = (at + rng.below(16)).min(out.len());
                let piece = out[at..end].to_vec();
                for _ in 0..rng.below(64) {
                    out.splice(at..at, piece.iter().copied());
                }
            }
            4 => {
                let word = INTERESTING[rng.below(INTERESTING.len())];
                out.splice(at..at, word.iter().copied());
            }
            5 => {
                let (_, other) = &others[rng.below(others.len())];
                let from = rng.below(other.len() + 1);
                out.splice(at.., other[from..].iter().copied());
            }
            _ => {
                let end = (at + rng.below(8)).min(out.len());
                out.drain(at..end);
            }
        }
    }
    out
}

fn replay(target: &str, run: impl Fn(&[u8]) -> bool) {
    let started = Instant::now();
    let seeds = corpus(target);
    let mut rng = Rng(0x5c0_4e42_0260_1128);
    let mut inputs = 0;
    for (name, seed) in &seeds {
        let ok = run(seed);
        if name.starts_with("valid_") {
            assert!(ok, "{target}/{name} should parse");
        }
        for _ in 0..MUTATIONS {
            run(&mutate(&mut rng, seed, &seeds));
            inputs += 1;
        }
    }
    eprintln!(
        "[fuzz_corpus] {target}: {} seeds, {inputs} mutations, {:?}",
        seeds.len(),
        started.elapsed()
    );
}

#[test]
fn score_request_corpus() {
    replay("score_request", fuzzing::score_request);
}

#[test]
fn batch_line_corpus() {
    replay("batch_line", fuzzing::batch_line);
}

#[test]
fn multipart_upload_corpus() {
    replay("multipart_upload", |bytes| {
        fuzzing::multipart_upload(bytes) > 0
    });
}
