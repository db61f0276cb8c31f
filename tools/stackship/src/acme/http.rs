//! The HTTP client the ACME client sends its requests through: rustls over the system's roots
//! (plus one extra root when the CA's server runs on a private PKI), a deadline on each request,
//! and failures that name the URL.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::error::AcmeError;

/// A request that did not get an answer: boxed into the ACME client's error and sorted back out
/// by [`AcmeError::from_acme`].
#[derive(Debug)]
pub(crate) struct TransportError {
    url: String,
    kind: TransportKind,
}

#[derive(Debug)]
enum TransportKind {
    TimedOut(Duration),
    Failed(String),
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            TransportKind::TimedOut(after) => {
                write!(f, "{}: no answer within {}s", self.url, after.as_secs())
            }
            TransportKind::Failed(message) => write!(f, "{}: {message}", self.url),
        }
    }
}

impl std::error::Error for TransportError {}

impl TransportError {
    pub(crate) fn timed_out(url: &str, after: Duration) -> Self {
        TransportError {
            url: url.to_string(),
            kind: TransportKind::TimedOut(after),
        }
    }

    pub(crate) fn failed(url: &str, message: String) -> Self {
        TransportError {
            url: url.to_string(),
            kind: TransportKind::Failed(message),
        }
    }

    pub(crate) fn into_acme(self) -> instant_acme::Error {
        instant_acme::Error::Other(Box::new(self))
    }

    pub(crate) fn into_acme_error(self, what: String) -> AcmeError {
        match self.kind {
            TransportKind::TimedOut(after) => AcmeError::Timeout {
                what,
                url: self.url,
                after,
            },
            TransportKind::Failed(message) => AcmeError::Transport {
                what,
                url: self.url,
                message,
            },
        }
    }
}

/// An error and its causes on one line (hyper's top-level message alone says little).
fn chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// Puts a deadline on each request of `inner` and names the URL in its failures.
pub(crate) struct Transport {
    inner: Box<dyn HttpClient>,
    request_timeout: Duration,
}

impl Transport {
    pub(crate) fn new(inner: Box<dyn HttpClient>, request_timeout: Duration) -> Self {
        Transport {
            inner,
            request_timeout,
        }
    }
}

impl HttpClient for Transport {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let url = req.uri().to_string();
        let limit = self.request_timeout;
        let answer = self.inner.request(req);
        Box::pin(async move {
            match tokio::time::timeout(limit, answer).await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(instant_acme::Error::Other(err))) => {
                    Err(TransportError::failed(&url, chain(err.as_ref())).into_acme())
                }
                Ok(Err(other)) => Err(other),
                Err(_) => Err(TransportError::timed_out(&url, limit).into_acme()),
            }
        })
    }
}

/// HTTPS only, HTTP/1.1 and 2, the system's roots and `extra_root_pem`'s certificates.
pub(crate) fn https_client(extra_root_pem: Option<&str>) -> Result<Box<dyn HttpClient>, AcmeError> {
    let extra_roots: Vec<CertificateDer<'static>> = match extra_root_pem {
        None => Vec::new(),
        Some(pem) => {
            let roots = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| AcmeError::ExtraRoot(format!("not PEM: {e}")))?;
            if roots.is_empty() {
                return Err(AcmeError::ExtraRoot(
                    "no CERTIFICATE block in the PEM".into(),
                ));
            }
            roots
        }
    };
    // rustls marks its ring provider deprecated for lack of post-quantum key exchange; ring is
    // the backend that builds without cmake and nasm, and talking to a CA needs no more.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())
            .map_err(|e| AcmeError::ExtraRoot(e.to_string()))?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AcmeError::ExtraRoot(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client: HyperClient<_, BodyWrapper<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build(connector);
    Ok(Box::new(client))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_extra_root_must_be_a_pem_certificate() {
        let err = https_client(Some("not a certificate")).err().unwrap();
        assert!(matches!(err, AcmeError::ExtraRoot(_)), "{err:?}");
        assert!(err.to_string().contains("no CERTIFICATE block"), "{err}");
    }

    #[test]
    fn an_error_chain_reads_as_one_line() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let outer = std::io::Error::other(inner);
        assert_eq!(chain(&outer), "refused");
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let err = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "tcp connect error",
        ));
        assert_eq!(chain(&err), "client error (Connect): tcp connect error");
    }
}
