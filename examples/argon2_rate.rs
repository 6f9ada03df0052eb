//! The machine's raw argon2id rate, the ceiling for Login and Create: the number of cores
//! divided by the single-threaded time of one hash at the service's parameters
//! (m=19456 KiB, t=2, p=1 unless overridden).
//!
//! Usage:
//!   argon2_rate [--hashes N] [--m KIB] [--t T] [--p P]   prints one JSON object
//!   argon2_rate --phc PASSWORD                           prints one PHC string (for seeding)

use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut hashes, mut m, mut t, mut p) = (12usize, 19_456u32, 2u32, 1u32);
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
    let hashes = hashes.max(3);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    // One warm-up hash, then `hashes` timed ones on this thread alone; the median is
    // the single-threaded time of one hash.
    let one = |argon2: &Argon2<'_>| {
        let salt = SaltString::generate(&mut OsRng);
        let started = Instant::now();
        argon2
            .hash_password(b"correct horse battery staple", &salt)
            .expect("hashing failed");
        started.elapsed()
    };
    one(&argon2);
    let mut times: Vec<Duration> = (0..hashes).map(|_| one(&argon2)).collect();
    times.sort();
    let median = times[times.len() / 2];
    let single_ms = median.as_secs_f64() * 1000.0;
    let ceiling = cores as f64 / median.as_secs_f64();

    // For information: what all cores achieve together (memory bandwidth can make this
    // lower than the ceiling).
    let started = Instant::now();
    let per_thread = (hashes / 2).max(2);
    std::thread::scope(|scope| {
        for _ in 0..cores {
            scope.spawn(|| {
                for _ in 0..per_thread {
                    one(&argon2);
                }
            });
        }
    });
    let parallel = (cores * per_thread) as f64 / started.elapsed().as_secs_f64();

    println!(
        "{{\"m_kib\":{m},\"t\":{t},\"p\":{p},\"cores\":{cores},\"hashes\":{hashes},\
         \"single_hash_ms\":{single_ms:.3},\"min_hash_ms\":{:.3},\"ceiling_per_s\":{ceiling:.2},\
         \"all_cores_measured_per_s\":{parallel:.2}}}",
        times[0].as_secs_f64() * 1000.0
    );
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
