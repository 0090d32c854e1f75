//! Argon2id password hashes: making them, checking them in constant time, and the working
//! memory the hashing threads keep between them.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, SaltString};
use argon2::Argon2;
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ApiResult};

/// Argon2's working memory (19 MiB with the default parameters), kept by a thread between
/// hashes. Allocating and freeing it per hash makes glibc raise its mmap threshold and then
/// keep every freed copy in the heap of whichever thread freed it: each verification left
/// 19 MiB behind until a dozen were resident.
pub type HashMemory = Vec<argon2::Block>;

/// Largest memory cost taken from a stored hash, in KiB; ours use 19 MiB.
const MAX_M_COST_KIB: u32 = 256 * 1024;

/// Runs Argon2 with `params` into `out` using `memory` (grown to the parameters' need and
/// kept).
fn argon2_into(
    algorithm: argon2::Algorithm,
    version: argon2::Version,
    params: argon2::Params,
    (password, salt): (&str, &[u8]),
    out: &mut [u8],
    memory: &mut HashMemory,
) -> bool {
    if params.m_cost() > MAX_M_COST_KIB {
        return false;
    }
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, argon2::Block::default());
    }
    // Every block is written before it is read, so what an earlier hash left needs no reset.
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, out, &mut memory[..blocks])
        .is_ok()
}

/// A new argon2id hash (PHC string) of `password`, computed in `memory`.
pub fn hash_password_in(password: &str, memory: &mut HashMemory) -> ApiResult<String> {
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf).map_err(ApiError::internal)?;
    let params = argon2::Params::default();
    let mut out = [0u8; argon2::Params::DEFAULT_OUTPUT_LEN];
    let (algorithm, version) = (argon2::Algorithm::Argon2id, argon2::Version::V0x13);
    if !argon2_into(
        algorithm,
        version,
        params.clone(),
        (password, salt_bytes),
        &mut out,
        memory,
    ) {
        return Err(ApiError::internal("argon2 hashing failed"));
    }
    let phc = PasswordHash {
        algorithm: algorithm.ident(),
        version: Some(version.into()),
        params: argon2::password_hash::ParamsString::try_from(&params)
            .map_err(ApiError::internal)?,
        salt: Some(salt.as_salt()),
        hash: Some(argon2::password_hash::Output::new(&out).map_err(ApiError::internal)?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `phc`, computed in `memory`; the comparison is
/// constant-time.
pub fn verify_password_in(password: &str, phc: &str, memory: &mut HashMemory) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = argon2::Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(argon2::Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = argon2::Params::try_from(&parsed) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    argon2_into(
        algorithm,
        version,
        params,
        (password, salt_bytes),
        &mut out,
        memory,
    ) && bool::from(out.as_slice().ct_eq(expected.as_bytes()))
}

/// A new argon2id hash of `password`, with memory of its own; for the rare hash outside the
/// hashing threads (the first admin at start).
pub fn hash_password(password: &str) -> ApiResult<String> {
    hash_password_in(password, &mut HashMemory::new())
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    verify_password_in(password, phc, &mut HashMemory::new())
}

/// A hash of nothing in particular, verified against when a username is unknown so that the
/// answer takes as long as for a wrong password. Computed once, in `memory`.
pub fn dummy_hash(memory: &mut HashMemory) -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password_in("not-a-real-password", memory).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong", &hash));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn hashes_agree_with_the_argon2_crate() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let mut memory = HashMemory::new();
        let ours = hash_password_in("correct horse", &mut memory).unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok());
        let salt = SaltString::generate(&mut OsRng);
        let theirs = Argon2::default()
            .hash_password(b"battery staple", &salt)
            .unwrap()
            .to_string();
        // The same memory, reused, gives the same answers.
        for _ in 0..2 {
            assert!(verify_password_in("battery staple", &theirs, &mut memory));
            assert!(!verify_password_in("battery", &theirs, &mut memory));
            assert!(verify_password_in("correct horse", &ours, &mut memory));
        }
        assert_eq!(memory.len(), 19 * 1024, "one 19 MiB buffer, kept");
    }
}
