//! What a certificate on disk says (names, issuer, validity) and whether it is time to renew it:
//! pure functions of the PEM and the clock.

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, TimeDelta, Utc};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;
use x509_parser::time::ASN1Time;

/// Renew this long before notAfter unless told otherwise (Let's Encrypt's advice for its
/// 90-day certificates).
pub const RENEW_BEFORE: TimeDelta = TimeDelta::days(30);

/// What a certificate says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The subjectAltName's DNS names and addresses (the subject's CN when there is none).
    pub names: Vec<String>,
    /// The issuer's distinguished name, e.g. `C=US, O=Let's Encrypt, CN=R11`.
    pub issuer: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// Why a PEM gives no certificate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("no PEM CERTIFICATE block")]
    NoCertificate,
    #[error("broken PEM: {0}")]
    Pem(String),
    #[error("not an X.509 certificate: {0}")]
    X509(String),
}

/// Whether a certificate should be renewed now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    Due { reason: DueReason },
    NotDue { not_after: DateTime<Utc> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DueReason {
    /// The file holds no certificate that can be read.
    Unreadable(CertError),
    Expired {
        not_after: DateTime<Utc>,
    },
    /// Within the renewal threshold of its notAfter.
    ExpiresSoon {
        not_after: DateTime<Utc>,
        left: TimeDelta,
    },
}

impl fmt::Display for DueReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DueReason::Unreadable(e) => write!(f, "the certificate cannot be read: {e}"),
            DueReason::Expired { not_after } => {
                write!(f, "expired on {}", not_after.format("%Y-%m-%d %H:%M UTC"))
            }
            DueReason::ExpiresSoon { not_after, left } => write!(
                f,
                "expires on {}, in {} days",
                not_after.format("%Y-%m-%d %H:%M UTC"),
                left.num_days()
            ),
        }
    }
}

/// Whether the certificate (the first of a PEM chain) is due for renewal at `now`: when it
/// cannot be read, or when less than `threshold` is left before its notAfter.
pub fn renewal(cert_pem: &[u8], now: DateTime<Utc>, threshold: TimeDelta) -> Renewal {
    let info = match describe(cert_pem) {
        Ok(info) => info,
        Err(e) => {
            return Renewal::Due {
                reason: DueReason::Unreadable(e),
            };
        }
    };
    let not_after = info.not_after;
    let left = not_after - now;
    if left <= TimeDelta::zero() {
        Renewal::Due {
            reason: DueReason::Expired { not_after },
        }
    } else if left <= threshold {
        Renewal::Due {
            reason: DueReason::ExpiresSoon { not_after, left },
        }
    } else {
        Renewal::NotDue { not_after }
    }
}

/// Names, issuer and validity of the first certificate of a PEM chain (the leaf).
pub fn describe(cert_pem: &[u8]) -> Result<CertInfo, CertError> {
    leaf(cert_pem).map(|(info, _)| info)
}

/// The leaf's description and its SubjectPublicKeyInfo (DER).
pub(crate) fn leaf(cert_pem: &[u8]) -> Result<(CertInfo, Vec<u8>), CertError> {
    let pem = first_certificate(cert_pem)?;
    let cert = pem
        .parse_x509()
        .map_err(|e| CertError::X509(e.to_string()))?;
    let info = info(&cert)?;
    Ok((info, cert.public_key().raw.to_vec()))
}

fn first_certificate(cert_pem: &[u8]) -> Result<Pem, CertError> {
    for block in Pem::iter_from_buffer(cert_pem) {
        match block {
            Ok(pem) if pem.label == "CERTIFICATE" => return Ok(pem),
            Ok(_) => continue,
            Err(x509_parser::error::PEMError::MissingHeader) => break,
            Err(e) => return Err(CertError::Pem(e.to_string())),
        }
    }
    Err(CertError::NoCertificate)
}

fn info(cert: &X509Certificate<'_>) -> Result<CertInfo, CertError> {
    let mut names = Vec::new();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertError::X509(format!("subjectAltName: {e}")))?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push(dns.to_string()),
                GeneralName::IPAddress(bytes) => {
                    let addr = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).map(IpAddr::from).ok(),
                        16 => <[u8; 16]>::try_from(*bytes).map(IpAddr::from).ok(),
                        _ => None,
                    };
                    if let Some(addr) = addr {
                        names.push(addr.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.to_string());
            }
        }
    }
    let validity = cert.validity();
    Ok(CertInfo {
        names,
        issuer: cert.issuer().to_string(),
        not_before: x509_time(&validity.not_before)?,
        not_after: x509_time(&validity.not_after)?,
    })
}

fn x509_time(t: &ASN1Time) -> Result<DateTime<Utc>, CertError> {
    DateTime::from_timestamp(t.timestamp(), 0)
        .ok_or_else(|| CertError::X509(format!("a date out of range: {t}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use rcgen::{CertificateParams, DnType, KeyPair, date_time_ymd};

    /// A self-signed certificate valid from `from` to `until` (year, month, day).
    fn cert(names: &[&str], from: (i32, u8, u8), until: (i32, u8, u8)) -> String {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = date_time_ymd(from.0, from.1, from.2);
        params.not_after = date_time_ymd(until.0, until.1, until.2);
        params
            .distinguished_name
            .push(DnType::CommonName, "Test Issuer R1");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Stackship Test CA");
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap()
    }

    #[test]
    fn a_certificate_far_from_expiry_is_not_due() {
        let pem = cert(&["a.example"], (2030, 1, 1), (2030, 4, 1));
        assert_eq!(
            renewal(pem.as_bytes(), at(2030, 1, 15), RENEW_BEFORE),
            Renewal::NotDue {
                not_after: at(2030, 4, 1)
            }
        );
        // 31 days before: still not due.
        assert!(matches!(
            renewal(pem.as_bytes(), at(2030, 3, 1), RENEW_BEFORE),
            Renewal::NotDue { .. }
        ));
    }

    #[test]
    fn within_the_threshold_it_is_due_and_says_when_it_expires() {
        let pem = cert(&["a.example"], (2030, 1, 1), (2030, 4, 1));
        let decision = renewal(pem.as_bytes(), at(2030, 3, 2), RENEW_BEFORE);
        let Renewal::Due { reason } = decision else {
            panic!("not due: {decision:?}");
        };
        assert_eq!(
            reason,
            DueReason::ExpiresSoon {
                not_after: at(2030, 4, 1),
                left: TimeDelta::days(30)
            }
        );
        assert_eq!(
            reason.to_string(),
            "expires on 2030-04-01 00:00 UTC, in 30 days"
        );
    }

    #[test]
    fn the_threshold_is_a_parameter() {
        let pem = cert(&["a.example"], (2030, 1, 1), (2030, 4, 1));
        let now = at(2030, 3, 2);
        assert!(matches!(
            renewal(pem.as_bytes(), now, TimeDelta::days(7)),
            Renewal::NotDue { .. }
        ));
        assert!(matches!(
            renewal(pem.as_bytes(), now, TimeDelta::days(60)),
            Renewal::Due {
                reason: DueReason::ExpiresSoon { .. }
            }
        ));
    }

    #[test]
    fn an_expired_certificate_is_due() {
        let pem = cert(&["a.example"], (2020, 1, 1), (2020, 4, 1));
        let decision = renewal(pem.as_bytes(), at(2030, 1, 1), RENEW_BEFORE);
        assert_eq!(
            decision,
            Renewal::Due {
                reason: DueReason::Expired {
                    not_after: at(2020, 4, 1)
                }
            }
        );
        let Renewal::Due { reason } = decision else {
            unreachable!()
        };
        assert_eq!(reason.to_string(), "expired on 2020-04-01 00:00 UTC");
    }

    #[test]
    fn an_unreadable_file_is_due_and_says_why() {
        for (pem, why) in [
            (&b""[..], "no PEM CERTIFICATE block"),
            (b"hello\n", "no PEM CERTIFICATE block"),
            (
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "no PEM CERTIFICATE block",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "not an X.509 certificate",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                "broken PEM",
            ),
        ] {
            let decision = renewal(pem, at(2030, 1, 1), RENEW_BEFORE);
            let Renewal::Due {
                reason: reason @ DueReason::Unreadable(_),
            } = decision
            else {
                panic!("{pem:?}: {decision:?}");
            };
            let message = reason.to_string();
            assert!(
                message.starts_with("the certificate cannot be read: "),
                "{message}"
            );
            assert!(message.contains(why), "{pem:?}: {message}");
        }
    }

    #[test]
    fn describe_reads_names_issuer_and_dates_of_the_leaf() {
        let leaf = cert(&["a.example", "b.example"], (2030, 1, 1), (2030, 4, 1));
        let other = cert(&["c.example"], (2031, 1, 1), (2031, 4, 1));
        let chain = format!("{leaf}{other}");
        let info = describe(chain.as_bytes()).unwrap();
        assert_eq!(info.names, ["a.example", "b.example"]);
        assert_eq!(info.issuer, "CN=Test Issuer R1, O=Stackship Test CA");
        assert_eq!(info.not_before, at(2030, 1, 1));
        assert_eq!(info.not_after, at(2030, 4, 1));
    }

    #[test]
    fn addresses_in_the_san_are_names_too() {
        let pem = cert(
            &["localhost", "127.0.0.1", "::1"],
            (2030, 1, 1),
            (2030, 4, 1),
        );
        assert_eq!(
            describe(pem.as_bytes()).unwrap().names,
            ["localhost", "127.0.0.1", "::1"]
        );
    }
}
