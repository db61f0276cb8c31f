//! `backend healthcheck`: probes the running service over HTTP so images need no curl.

use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Which endpoint to probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `/api/service/health`: ready once since start, then liveness (the container
    /// healthcheck and so the rollout gate).
    Health,
    /// `/api/service/ping`: the process serves HTTP (liveness).
    Ping,
    /// `/api/service/ready`: the database answers and the service is not draining.
    Ready,
}

impl Probe {
    fn path(self) -> &'static str {
        match self {
            Probe::Health => "/api/service/health",
            Probe::Ping => "/api/service/ping",
            Probe::Ready => "/api/service/ready",
        }
    }
}

/// The URL probed for a service listening on `port` of this host.
pub fn probe_url(port: u16, probe: Probe) -> String {
    format!("http://127.0.0.1:{port}{}", probe.path())
}

/// GETs `url`; Ok when the answer is 2xx within `timeout`.
pub async fn check(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("invalid URL {url:?}"))?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = tokio::time::timeout(timeout, async {
        let response = client.get(uri).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    })
    .await
    .with_context(|| format!("{url}: no answer within {timeout:?}"))?
    .with_context(|| format!("{url}: request failed"))?;
    let (status, body) = response;
    if !status.is_success() {
        bail!(
            "{url}: HTTP {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_probe_has_its_own_endpoint() {
        assert_eq!(
            probe_url(8080, Probe::Health),
            "http://127.0.0.1:8080/api/service/health"
        );
        assert_eq!(
            probe_url(8080, Probe::Ping),
            "http://127.0.0.1:8080/api/service/ping"
        );
        assert_eq!(
            probe_url(9, Probe::Ready),
            "http://127.0.0.1:9/api/service/ready"
        );
    }
}
