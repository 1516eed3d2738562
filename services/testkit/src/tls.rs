//! Test certificates: an authority of the test's own and a server certificate it signed for
//! `localhost` and `127.0.0.1`, made with `openssl` (installed by `scripts/test`).

use std::process::{Command, Stdio};

/// Runs `openssl` with `args`, quietly; panics if it fails.
pub(crate) fn openssl(args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed (scripts/test installs it)");
    assert!(status.success(), "openssl {args:?}");
}

/// A certificate authority and a server certificate and key, as PEM files in a temporary
/// directory (removed when dropped).
pub struct TestCertificates {
    dir: tempfile::TempDir,
}

impl TestCertificates {
    /// Makes a fresh authority and server certificate (valid for two days).
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        let (ca_key, ca, key, csr, cert, ext) = (
            path("ca.key"),
            path("ca.crt"),
            path("server.key"),
            path("server.csr"),
            path("server.crt"),
            path("ext"),
        );
        std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1").expect("write the extension file");
        let days = ["-days", "2"];
        openssl(
            &[
                &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &ca_key, "-out", &ca][..],
                &days,
                &["-subj", "/CN=test-ca"],
            ]
            .concat(),
        );
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=localhost",
        ]);
        openssl(
            &[
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &ca,
                    "-CAkey",
                    &ca_key,
                    "-CAcreateserial",
                    "-out",
                    &cert,
                ][..],
                &days,
                &["-extfile", &ext],
            ]
            .concat(),
        );
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// The authority's certificate (PEM): what clients trust.
    pub fn ca_path(&self) -> String {
        self.path("ca.crt")
    }

    /// The server's certificate (PEM).
    pub fn cert_path(&self) -> String {
        self.path("server.crt")
    }

    /// The server's private key (PEM).
    pub fn key_path(&self) -> String {
        self.path("server.key")
    }

    /// Keeps the files for as long as the returned directory lives.
    pub fn into_dir(self) -> tempfile::TempDir {
        self.dir
    }
}
