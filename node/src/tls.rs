//! TLS for outgoing HTTPS (probes of `https://` MCP servers): rustls with the `ring`
//! provider (no aws-lc build), verifying against the OS trust store through
//! rustls-platform-verifier, which on Linux reads the system bundle and honours
//! `SSL_CERT_FILE` and `SSL_CERT_DIR`.

use std::sync::Once;

/// Installs `ring` as the process's rustls provider. Idempotent; must run before any
/// `reqwest::Client` is built (reqwest's `rustls-no-provider` panics without one).
pub fn install_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
