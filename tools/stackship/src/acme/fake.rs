//! An ACME server in memory for the unit tests: a directory, nonces, account registration, and
//! whatever answers a test adds for other URLs; it records every request as `METHOD url`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use std::path::Path;

use bytes::Bytes;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

use super::Account;

pub(crate) const DIR: &str = "https://ca.test/dir";

/// An account on `ca`, its credentials in `dir`.
pub(crate) async fn fake_account(ca: &FakeCa, dir: &Path) -> Account {
    Account::open_with(Box::new(ca.clone()), DIR, &dir.join("acct.json"), &[])
        .await
        .unwrap()
        .0
}

/// One canned answer: status, body, and a `Location` header when given.
#[derive(Clone)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: String,
    pub(crate) location: Option<String>,
}

#[derive(Clone, Default)]
pub(crate) struct FakeCa {
    pub(crate) requests: Arc<Mutex<Vec<String>>>,
    routes: Arc<Mutex<HashMap<String, Answer>>>,
}

impl FakeCa {
    /// Answers `url` with `status` and `body` from now on.
    pub(crate) fn route(&self, url: &str, status: u16, body: &str, location: Option<&str>) {
        self.routes.lock().unwrap().insert(
            url.to_string(),
            Answer {
                status,
                body: body.to_string(),
                location: location.map(str::to_string),
            },
        );
    }

    /// Takes `other`'s answers for the URLs it has answers for.
    pub(crate) fn copy_routes_from(&self, other: &FakeCa) {
        let theirs = other.routes.lock().unwrap().clone();
        self.routes.lock().unwrap().extend(theirs);
    }

    /// How many accounts were registered.
    pub(crate) fn registrations(&self) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.as_str() == "POST https://ca.test/acct")
            .count()
    }

    fn answer(&self, url: &str) -> Answer {
        if let Some(answer) = self.routes.lock().unwrap().get(url) {
            return answer.clone();
        }
        let (status, body, location) = match url {
            DIR => (
                200,
                r#"{"newNonce":"https://ca.test/nonce","newAccount":"https://ca.test/acct","newOrder":"https://ca.test/order"}"#,
                None,
            ),
            "https://ca.test/nonce" => (200, "", None),
            "https://ca.test/acct" => (
                201,
                r#"{"status":"valid"}"#,
                Some("https://ca.test/acct/42".to_string()),
            ),
            _ => (
                404,
                r#"{"type":"urn:ietf:params:acme:error:malformed","detail":"no such thing"}"#,
                None,
            ),
        };
        Answer {
            status,
            body: body.to_string(),
            location,
        }
    }
}

impl HttpClient for FakeCa {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let url = req.uri().to_string();
        self.requests
            .lock()
            .unwrap()
            .push(format!("{} {url}", req.method()));
        let answer = self.answer(&url);
        let mut builder = http::Response::builder()
            .status(answer.status)
            .header("Replay-Nonce", "nonce-1");
        if let Some(location) = &answer.location {
            builder = builder.header("Location", location);
        }
        let (parts, body) = builder.body(answer.body.into_bytes()).unwrap().into_parts();
        Box::pin(async move {
            Ok(BytesResponse::from(http::Response::from_parts(
                parts,
                BodyWrapper::from(body),
            )))
        })
    }
}
