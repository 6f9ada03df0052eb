//! The machine's raw argon2id rate, the ceiling for Login and Create: the number of cores
//! divided by the single-threaded time of one hash at the service's parameters
//! (m=19456 KiB, t=2, p=1 unless overridden).
//!
//! Usage:
//!   argon2_rate [--hashes N] [--m KIB] [--t T] [--p P]   prints one JSON object
//!   argon2_rate --phc PASSWORD                           prints one PHC string (for seeding)
//!
//! The JSON holds:
//! - `single_hash_ms`: median time of one hash on one thread, computing into argon2
//!   memory allocated once beforehand: the machine's raw argon2id speed, and
//!   `ceiling_per_s` = cores / that time: the ceiling the benchmark judges against;
//! - `single_hash_alloc_ms`: the same through the PHC API with the memory allocated per
//!   hash, as the service did before it kept one buffer per hashing thread (the
//!   difference is page faults and zeroing, whose cost varies a lot on a virtual
//!   machine);
//! - `all_cores_per_s` and `all_cores_alloc_per_s`: hashes per second with every core
//!   hashing at once, memory reused or allocated per hash; lower than the ceiling when
//!   the cores compete for cache and memory bandwidth.
#![allow(clippy::unwrap_used)] // a measuring tool: a panic is a failed run

use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

const PASSWORD: &[u8] = b"correct horse battery staple";

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut hashes, mut m, mut t, mut p) = (16usize, 19_456u32, 2u32, 1u32);
    let mut phc_of: Option<String> = None;
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--hashes" => hashes = parse(&value()),
            "--m" => m = parse(&value()),
            "--t" => t = parse(&value()),
            "--p" => p = parse(&value()),
            "--phc" => phc_of = Some(value()),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let params = Params::new(m, t, p, None).unwrap_or_else(|e| usage(&e.to_string()));
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    if let Some(password) = phc_of {
        let salt = SaltString::generate(&mut OsRng);
        let phc = argon2
            .hash_password(password.as_bytes(), &salt)
            .expect("hashing failed");
        println!("{phc}");
        return;
    }
    let hashes = hashes.clamp(3, 1000);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let blocks = argon2.params().block_count();

    // One warm-up of each kind, then `hashes` timed ones on this thread alone.
    phc_hash(&argon2);
    let single = median((0..hashes).map(|_| phc_hash(&argon2)).collect());
    let mut memory = vec![Block::default(); blocks];
    reused_hash(&argon2, &mut memory);
    let single_reused = median(
        (0..hashes)
            .map(|_| reused_hash(&argon2, &mut memory))
            .collect(),
    );
    drop(memory);

    // Every core at once, each thread hashing `per_thread` times.
    let per_thread = (hashes / 2).max(2);
    let all_cores = |reuse: bool| {
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..cores {
                scope.spawn(|| {
                    let mut memory = reuse.then(|| vec![Block::default(); blocks]);
                    for _ in 0..per_thread {
                        match memory.as_mut() {
                            Some(memory) => reused_hash(&argon2, memory),
                            None => phc_hash(&argon2),
                        };
                    }
                });
            }
        });
        (cores * per_thread) as f64 / started.elapsed().as_secs_f64()
    };
    let parallel = all_cores(false);
    let parallel_reused = all_cores(true);

    println!(
        "{{\"m_kib\":{m},\"t\":{t},\"p\":{p},\"cores\":{cores},\"hashes\":{hashes},\
         \"single_hash_ms\":{:.3},\"ceiling_per_s\":{:.2},\"single_hash_alloc_ms\":{:.3},\
         \"all_cores_per_s\":{parallel_reused:.2},\"all_cores_alloc_per_s\":{parallel:.2}}}",
        ms(single_reused),
        cores as f64 / single_reused.as_secs_f64(),
        ms(single),
    );
}

/// One hash through the PHC API: a fresh salt, memory allocated inside.
fn phc_hash(argon2: &Argon2<'_>) -> Duration {
    let salt = SaltString::generate(&mut OsRng);
    let started = Instant::now();
    argon2
        .hash_password(PASSWORD, &salt)
        .expect("hashing failed");
    started.elapsed()
}

/// One hash into memory allocated beforehand.
fn reused_hash(argon2: &Argon2<'_>, memory: &mut [Block]) -> Duration {
    let mut salt = [0u8; 16];
    OsRng.fill_bytes(&mut salt);
    let mut out = [0u8; 32];
    let started = Instant::now();
    argon2
        .hash_password_into_with_memory(PASSWORD, &salt, &mut out, &mut *memory)
        .expect("hashing failed");
    started.elapsed()
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn parse<T: std::str::FromStr>(text: &str) -> T {
    text.parse()
        .unwrap_or_else(|_| usage(&format!("not a number: {text}")))
}

fn usage(problem: &str) -> ! {
    eprintln!("argon2_rate: {problem}");
    eprintln!("usage: argon2_rate [--hashes N] [--m KIB] [--t T] [--p P] | --phc PASSWORD");
    std::process::exit(2)
}
