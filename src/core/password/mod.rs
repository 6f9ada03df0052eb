//! Password hashing with argon2id, and checking the hashes other systems made
//! ([`formats`]) until a sign-in replaces them.
//!
//! Hashing is deliberately slow, so it never runs on the async workers: jobs go to a
//! fixed pool of one thread per core, and at most that many are admitted at once. Waiting
//! for a slot is an async wait that a disconnected client cancels for free; the number
//! of argon2 memory blocks alive at any moment is bounded by the pool size, which bounds
//! memory under a login flood.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::cell::RefCell;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

pub mod formats;

pub use formats::{CostLimits, StoredHash};

use crate::metrics::Argon2Metrics;
use tokio::sync::{oneshot, Semaphore};

use crate::domain::Password;
use crate::error::Error;

/// OWASP's minimum for argon2id: 19 MiB of memory, 2 passes, 1 lane.
pub const OWASP_MIN_M_KIB: u32 = 19_456;
pub const OWASP_MIN_T: u32 = 2;
pub const OWASP_MIN_P: u32 = 1;

/// argon2id cost parameters for new hashes. Existing hashes keep the parameters recorded
/// in their PHC string, so these can be raised at any time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl Default for HashParams {
    fn default() -> Self {
        Self {
            m_kib: OWASP_MIN_M_KIB,
            t: OWASP_MIN_T,
            p: OWASP_MIN_P,
        }
    }
}

/// The outcome of checking a password.
#[derive(Debug, PartialEq, Eq)]
pub enum Verification {
    /// The password is right. When the stored hash was made with weaker parameters than
    /// the configured ones, `rehashed` holds a new hash of it to store in its place.
    Match {
        rehashed: Option<String>,
    },
    Mismatch,
}

/// Adds `nice` to the calling thread's nice value (up to 19, the lowest priority); on
/// Linux a thread has its own.
#[cfg(target_os = "linux")]
fn lower_priority(nice: u8) {
    use rustix::process::{getpriority_process, setpriority_process};
    if nice == 0 {
        return;
    }
    let thread = Some(rustix::thread::gettid());
    let lowered = getpriority_process(thread)
        .and_then(|now| setpriority_process(thread, (now + i32::from(nice)).min(19)));
    if let Err(err) = lowered {
        tracing::warn!(error = %err, nice, "a hashing thread's nice value could not be set");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(nice: u8) {
    if nice > 0 {
        tracing::warn!(nice, "--hash-nice is taken on Linux only");
    }
}

pub struct PasswordHasher {
    argon2: Argon2<'static>,
    pool: rayon::ThreadPool,
    slots: Arc<Semaphore>,
    /// A PHC string with the configured parameters, a random salt and a random output,
    /// verified against when the account does not exist so that an unknown user costs
    /// the same time as a wrong password (see `dummy_hash`).
    dummy: String,
    /// argon2 computations so far (hashes and verifications).
    runs: Arc<AtomicU64>,
    /// Computations waiting and running, and their waits.
    metrics: Argon2Metrics,
}

impl PasswordHasher {
    /// `threads` is the number of hashes computed at once (normally the core count).
    pub fn new(params: HashParams, threads: usize) -> Result<Self, Error> {
        Self::with_nice(params, threads, 0)
    }

    /// As [`Self::new`], with the hashing threads `nice` nice values below the rest of
    /// the process (Linux; at most 19): above 0 the scheduler gives the CPU to the other
    /// threads first when both want it, so short requests are served between hashes.
    pub fn with_nice(params: HashParams, threads: usize, nice: u8) -> Result<Self, Error> {
        if params.m_kib < OWASP_MIN_M_KIB || params.t < OWASP_MIN_T || params.p < OWASP_MIN_P {
            return Err(Error::invalid(
                "argon2",
                format!(
                    "parameters must be at least m={OWASP_MIN_M_KIB} KiB, t={OWASP_MIN_T}, p={OWASP_MIN_P} (OWASP)"
                ),
            ));
        }
        let params = Params::new(params.m_kib, params.t, params.p, None)
            .map_err(|e| Error::invalid("argon2", e.to_string()))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("argon2-{i}"))
            .start_handler(move |_| lower_priority(nice))
            // A panic in a job must not abort the process; the waiting request sees the
            // dropped channel and answers 500.
            .panic_handler(|_| tracing::error!("a password hashing job panicked"))
            .build()
            .map_err(Error::internal)?;
        // Every thread has started (and taken its nice value) before the first hash.
        pool.broadcast(|_| ());
        let runs = Arc::new(AtomicU64::new(0));
        let dummy = dummy_hash(argon2.params())?;
        Ok(Self {
            argon2,
            pool,
            slots: Arc::new(Semaphore::new(threads)),
            dummy,
            runs,
            metrics: Argon2Metrics::default(),
        })
    }

    /// Reports its queue and its waits to `metrics`.
    pub fn with_metrics(mut self, metrics: Argon2Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// A PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`) for a new password.
    pub async fn hash(&self, password: Password) -> Result<String, Error> {
        let argon2 = self.argon2.clone();
        let runs = self.runs.clone();
        self.run(move || hash_with(&argon2, password.expose().as_bytes(), &runs))
            .await?
    }

    /// Checks `password` against a stored PHC string; with no stored hash (unknown user) it
    /// checks against the dummy hash and reports a mismatch, in the same time.
    pub async fn verify(
        &self,
        password: Password,
        stored: Option<String>,
    ) -> Result<Verification, Error> {
        let known = stored.is_some();
        let phc = stored.unwrap_or_else(|| self.dummy.clone());
        let argon2 = self.argon2.clone();
        let runs = self.runs.clone();
        self.run(move || {
            let unreadable =
                |e: String| Error::internal(format!("stored password hash is unreadable: {e}"));
            let stored = StoredHash::parse(&phc).map_err(unreadable)?;
            let secret = password.expose().as_bytes();
            // Always verify, known account or not: the time must not tell them apart.
            let (matched, weaker) = match &stored {
                StoredHash::Argon2 { hash, django } => (
                    verify_with(secret, hash, argon2.params(), &runs)?,
                    *django || is_weaker(hash, argon2.params()),
                ),
                // Another system's hash: replaced at the first sign-in.
                StoredHash::Foreign(foreign) => {
                    (foreign.verify(password.expose()).map_err(unreadable)?, true)
                }
            };
            if !(matched && known) {
                return Ok(Verification::Mismatch);
            }
            let rehashed = if weaker {
                Some(hash_with(&argon2, secret, &runs)?)
            } else {
                None
            };
            Ok(Verification::Match { rehashed })
        })
        .await?
    }

    /// How many argon2 computations (hashes and verifications) have run: a measure of
    /// the CPU spent on passwords.
    pub fn argon2_runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Runs `job` on the hashing pool once a slot is free.
    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let queued = std::time::Instant::now();
        // Counted while waiting, even if the request is dropped meanwhile.
        let waiting = Counted::new(&self.metrics.waiting);
        let slot = Arc::clone(&self.slots).acquire_owned().await;
        drop(waiting);
        let slot = slot.map_err(Error::internal)?;
        self.metrics.wait.observe(queued.elapsed().as_secs_f64());
        let (tx, rx) = oneshot::channel();
        let running = Counted::new(&self.metrics.running);
        self.pool.spawn(move || {
            let _slot = slot;
            // Counted until the job ends, however it ends.
            let _running = running;
            // The receiver is gone only if the request was dropped; nothing to do then.
            let _ = tx.send(job());
        });
        rx.await
            .map_err(|_| Error::internal("password hashing job failed"))
    }
}

/// One more on a gauge, until dropped.
struct Counted(prometheus_client::metrics::gauge::Gauge);

impl Counted {
    fn new(gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// True when `hash` was made with a different algorithm or version, or with less memory,
/// fewer passes or fewer lanes than `target`.
fn is_weaker(hash: &PasswordHash<'_>, target: &Params) -> bool {
    if hash.algorithm != Algorithm::Argon2id.ident() || hash.version != Some(Version::V0x13 as u32)
    {
        return true;
    }
    match Params::try_from(hash) {
        Ok(params) => {
            params.m_cost() < target.m_cost()
                || params.t_cost() < target.t_cost()
                || params.p_cost() < target.p_cost()
        }
        Err(_) => true,
    }
}

thread_local! {
    /// The calling thread's argon2 memory, kept between computations. Allocating and
    /// zeroing 19 MiB for every hash costs time, and the allocator keeps freed buffers
    /// per thread anyway; reusing one buffer per pool thread bounds the memory at
    /// threads x m and spares the page faults.
    static BLOCKS: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with `count` blocks of memory, the calling thread's own. A buffer larger than
/// `keep` blocks (a stored hash with a higher cost than configured) is allocated for this
/// computation only.
fn with_blocks<T>(count: usize, keep: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
    if count > keep {
        return f(&mut vec![Block::default(); count]);
    }
    BLOCKS.with(|cell| {
        let mut blocks = cell.borrow_mut();
        if blocks.len() < count {
            blocks.resize(count, Block::default());
        }
        f(&mut blocks[..count])
    })
}

/// Computes the argon2 output of `password` under `argon2` (its algorithm, version and
/// parameters) and `salt`, `len` bytes long.
fn compute(
    argon2: &Argon2<'_>,
    password: &[u8],
    salt: Salt<'_>,
    len: usize,
    keep: usize,
    runs: &AtomicU64,
) -> Result<Output, Error> {
    let mut salt_bytes = [0u8; Salt::MAX_LENGTH];
    let salt = salt
        .decode_b64(&mut salt_bytes)
        .map_err(|e| Error::internal(format!("password hash salt is unreadable: {e}")))?;
    let output = Output::init_with(len, |out| {
        with_blocks(argon2.params().block_count(), keep, |blocks| {
            argon2.hash_password_into_with_memory(password, salt, out, blocks)
        })
        .map_err(|_| argon2::password_hash::Error::Crypto)
    })
    .map_err(|e| Error::internal(format!("argon2 failed: {e}")));
    runs.fetch_add(1, Ordering::Relaxed);
    output
}

/// A PHC string of `password` under the configured argon2id parameters, with a new salt.
fn hash_with(argon2: &Argon2<'_>, password: &[u8], runs: &AtomicU64) -> Result<String, Error> {
    let params = argon2.params();
    let salt = SaltString::generate(&mut OsRng);
    let len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let keep = params.block_count();
    let output = compute(argon2, password, salt.as_salt(), len, keep, runs)?;
    phc_string(params, &salt, output)
}

/// A PHC string under `params` with a random salt and a random output: what an unknown
/// user's password is verified against. Verifying costs exactly what verifying a real
/// hash with these parameters costs, and no password matches it (it would take finding
/// an argon2 preimage of random bytes), so it needs no hash computed at start-up: that
/// would cost start-up time, and a buffer of m KiB that the allocator may keep.
fn dummy_hash(params: &Params) -> Result<String, Error> {
    let salt = SaltString::generate(&mut OsRng);
    let mut random = vec![0u8; params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
    rand::RngCore::fill_bytes(&mut OsRng, &mut random);
    let output =
        Output::new(&random).map_err(|e| Error::internal(format!("argon2 output: {e}")))?;
    phc_string(params, &salt, output)
}

fn phc_string(params: &Params, salt: &SaltString, output: Output) -> Result<String, Error> {
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params)
            .map_err(|e| Error::internal(format!("argon2 parameters: {e}")))?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(hash.to_string())
}

/// Whether `password` matches the PHC string `hash`, computed with the algorithm,
/// version and parameters the hash records. `configured` bounds the memory kept.
fn verify_with(
    password: &[u8],
    hash: &PasswordHash<'_>,
    configured: &Params,
    runs: &AtomicU64,
) -> Result<bool, Error> {
    let unreadable = |e: &dyn std::fmt::Display| {
        Error::internal(format!("stored password hash is unreadable: {e}"))
    };
    let algorithm = Algorithm::try_from(hash.algorithm).map_err(|e| unreadable(&e))?;
    let version = match hash.version {
        Some(v) => Version::try_from(v).map_err(|e| unreadable(&e))?,
        None => Version::default(),
    };
    let params = Params::try_from(hash).map_err(|e| unreadable(&e))?;
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return Err(unreadable(&"no salt or no hash"));
    };
    let argon2 = Argon2::new(algorithm, version, params);
    let keep = configured.block_count();
    let computed = compute(&argon2, password, salt, expected.len(), keep, runs)?;
    // Output's equality is constant-time.
    Ok(computed == expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pw(v: &str) -> Password {
        Password::candidate("password", Some(v.to_string())).unwrap()
    }

    /// The nice value of the thread that runs this, as the kernel has it.
    #[cfg(target_os = "linux")]
    fn own_nice() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
    }

    /// `--hash-nice` lowers every hashing thread, and only them.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_hashing_threads_have_the_nice_value_given() {
        let before = own_nice();
        let hasher = PasswordHasher::with_nice(HashParams::default(), 2, 7).unwrap();
        let nices: Vec<i32> = hasher.pool.broadcast(|_| own_nice());
        let lowered = (before + 7).min(19);
        assert_eq!(nices, vec![lowered, lowered]);
        assert_eq!(own_nice(), before, "the caller's thread is left as it was");
        let plain = PasswordHasher::new(HashParams::default(), 1).unwrap();
        assert_eq!(plain.pool.broadcast(|_| own_nice()), vec![before]);
    }

    #[tokio::test]
    async fn hashes_are_argon2id_phc_strings_at_the_configured_cost() {
        let hasher = PasswordHasher::new(HashParams::default(), 2).unwrap();
        let phc = hasher.hash(pw("correct horse")).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        let other = hasher.hash(pw("correct horse")).await.unwrap();
        assert_ne!(phc, other, "every hash has its own salt");
    }

    #[tokio::test]
    async fn a_foreign_hash_that_matches_comes_with_an_argon2id_replacement() {
        let hasher = PasswordHasher::new(HashParams::default(), 1).unwrap();
        let bcrypt = bcrypt::hash("correct horse", 4).unwrap();
        let verdict = hasher
            .verify(pw("correct horse"), Some(bcrypt.clone()))
            .await
            .unwrap();
        let Verification::Match {
            rehashed: Some(new_hash),
        } = verdict
        else {
            panic!("expected a match with a new hash, got {verdict:?}");
        };
        assert!(new_hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert_eq!(
            hasher
                .verify(pw("correct horsf"), Some(bcrypt))
                .await
                .unwrap(),
            Verification::Mismatch
        );
    }

    #[tokio::test]
    async fn verify_matches_only_the_right_password() {
        let hasher = PasswordHasher::new(HashParams::default(), 1).unwrap();
        let phc = hasher.hash(pw("correct horse")).await.unwrap();
        assert_eq!(
            hasher
                .verify(pw("correct horse"), Some(phc.clone()))
                .await
                .unwrap(),
            Verification::Match { rehashed: None }
        );
        assert_eq!(
            hasher.verify(pw("Correct horse"), Some(phc)).await.unwrap(),
            Verification::Mismatch
        );
    }

    #[tokio::test]
    async fn an_unknown_user_never_matches_even_the_dummy_password() {
        let hasher = PasswordHasher::new(HashParams::default(), 1).unwrap();
        assert_eq!(
            hasher.verify(pw("anything"), None).await.unwrap(),
            Verification::Mismatch
        );
    }

    #[test]
    fn the_dummy_hash_has_the_configured_cost_and_a_salt_of_its_own() {
        let params = HashParams {
            m_kib: OWASP_MIN_M_KIB + 1024,
            t: OWASP_MIN_T + 1,
            p: OWASP_MIN_P,
        };
        let hasher = PasswordHasher::new(params, 1).unwrap();
        let other = PasswordHasher::new(params, 1).unwrap();
        let dummy = PasswordHash::new(&hasher.dummy).unwrap();
        // Verifying it costs what verifying a stored hash made now costs.
        assert!(!is_weaker(&dummy, hasher.argon2.params()));
        let stored = Params::try_from(&dummy).unwrap();
        assert_eq!(stored.m_cost(), params.m_kib);
        assert_eq!(stored.t_cost(), params.t);
        assert_eq!(stored.p_cost(), params.p);
        assert_eq!(
            dummy.hash.unwrap().len(),
            Params::DEFAULT_OUTPUT_LEN,
            "the output is as long as a real hash's"
        );
        assert_ne!(hasher.dummy, other.dummy);
        assert_eq!(hasher.argon2_runs(), 0, "no hash is computed at start-up");
    }

    #[tokio::test]
    async fn an_unknown_user_costs_one_verification_like_a_wrong_password() {
        let hasher = PasswordHasher::new(HashParams::default(), 1).unwrap();
        let phc = hasher.hash(pw("correct horse")).await.unwrap();
        let before = hasher.argon2_runs();
        hasher.verify(pw("wrong horse"), Some(phc)).await.unwrap();
        assert_eq!(hasher.argon2_runs(), before + 1);
        hasher.verify(pw("wrong horse"), None).await.unwrap();
        assert_eq!(
            hasher.argon2_runs(),
            before + 2,
            "the dummy hash is really verified"
        );
    }

    #[tokio::test]
    async fn a_corrupt_stored_hash_is_an_internal_error() {
        let hasher = PasswordHasher::new(HashParams::default(), 1).unwrap();
        let err = hasher
            .verify(pw("anything"), Some("not a phc string".into()))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Internal(_)));
    }

    #[tokio::test]
    async fn a_match_against_weaker_parameters_comes_with_a_stronger_hash() {
        let weak = PasswordHasher::new(HashParams::default(), 1).unwrap();
        let old = weak.hash(pw("correct horse")).await.unwrap();
        let strong_params = HashParams {
            m_kib: 32_768,
            t: 3,
            p: 1,
        };
        let strong = PasswordHasher::new(strong_params, 1).unwrap();
        let Verification::Match {
            rehashed: Some(new),
        } = strong
            .verify(pw("correct horse"), Some(old.clone()))
            .await
            .unwrap()
        else {
            panic!("expected a rehash");
        };
        assert!(new.starts_with("$argon2id$v=19$m=32768,t=3,p=1$"), "{new}");
        // The new hash verifies and needs nothing more.
        assert_eq!(
            strong.verify(pw("correct horse"), Some(new)).await.unwrap(),
            Verification::Match { rehashed: None }
        );
        // A wrong password never triggers a rehash.
        assert_eq!(
            strong.verify(pw("wrong horse"), Some(old)).await.unwrap(),
            Verification::Mismatch
        );
    }

    #[tokio::test]
    async fn hashes_are_interchangeable_with_the_argon2_crates_own() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let hasher = PasswordHasher::new(HashParams::default(), 1).unwrap();
        // Ours verifies with the crate's verifier...
        let ours = hasher.hash(pw("correct horse")).await.unwrap();
        let standard = Argon2::default();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(standard.verify_password(b"correct horse", &parsed).is_ok());
        assert!(standard.verify_password(b"correct horsf", &parsed).is_err());
        // ...and the crate's (other variants and costs included) verify with ours.
        for (algorithm, m, t) in [
            (Algorithm::Argon2id, 19_456, 2),
            (Algorithm::Argon2i, 8_192, 3),
        ] {
            let theirs = Argon2::new(
                algorithm,
                Version::V0x13,
                Params::new(m, t, 1, None).unwrap(),
            )
            .hash_password(b"correct horse", &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
            assert!(matches!(
                hasher
                    .verify(pw("correct horse"), Some(theirs.clone()))
                    .await
                    .unwrap(),
                Verification::Match { .. }
            ));
            assert_eq!(
                hasher
                    .verify(pw("correct horsf"), Some(theirs))
                    .await
                    .unwrap(),
                Verification::Mismatch
            );
        }
    }

    #[test]
    fn parameters_below_the_owasp_minimum_are_refused() {
        for params in [
            HashParams {
                m_kib: 19_455,
                ..HashParams::default()
            },
            HashParams {
                t: 1,
                ..HashParams::default()
            },
            HashParams {
                p: 0,
                ..HashParams::default()
            },
        ] {
            assert!(PasswordHasher::new(params, 1).is_err(), "{params:?}");
        }
    }
}
