//! A verified client certificate as an identity: its subject and subject
//! alternative names, for the access log and for the header Livy gets
//! (`tls-client-identity-header`).
//!
//! The header value follows the element syntax of Envoy's
//! `X-Forwarded-Client-Cert`, which tools already parse:
//! `Subject="CN=alice,O=Example";DNS=alice.example;URI=spiffe://x/alice`,
//! one `KEY=value` pair per name, `;` between them, a value quoted when it
//! holds `,`, `;`, `=` or `"` (a quote or backslash inside escaped with a
//! backslash). Kinds: `Subject`, `DNS`, `URI`, `Email`, `IP`.

use http::HeaderValue;
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Who a verified client certificate names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The subject as RFC 4514-like text (`CN=alice, O=Example`).
    pub subject: String,
    /// The subject alternative names: (`DNS`|`URI`|`Email`|`IP`, value).
    pub sans: Vec<(&'static str, String)>,
}

impl ClientIdentity {
    /// The identity in `cert` (DER), or why it cannot be read.
    pub fn from_der(cert: &CertificateDer<'_>) -> Result<ClientIdentity, String> {
        let (_, x) = X509Certificate::from_der(cert.as_ref()).map_err(|e| e.to_string())?;
        let subject = x.subject().to_string();
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = x.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(d) => sans.push(("DNS", d.to_string())),
                    GeneralName::URI(u) => sans.push(("URI", u.to_string())),
                    GeneralName::RFC822Name(m) => sans.push(("Email", m.to_string())),
                    GeneralName::IPAddress(ip) => {
                        if let Some(ip) = ip_text(ip) {
                            sans.push(("IP", ip));
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(ClientIdentity { subject, sans })
    }

    /// The SANs for a log line: `DNS:alice.example,URI:spiffe://x`, or `-`.
    pub fn sans_text(&self) -> String {
        if self.sans.is_empty() {
            return "-".to_string();
        }
        let parts: Vec<String> = self.sans.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        parts.join(",")
    }

    /// The header value (module docs for the syntax); `None` only if no
    /// valid value can be made (never for printable names: control bytes
    /// are replaced by `?`).
    pub fn header_value(&self) -> Option<HeaderValue> {
        let mut out = String::new();
        push_element(&mut out, "Subject", &self.subject, true);
        for (kind, value) in &self.sans {
            out.push(';');
            push_element(&mut out, kind, value, false);
        }
        HeaderValue::from_str(&out).ok()
    }
}

fn push_element(out: &mut String, key: &str, value: &str, always_quote: bool) {
    out.push_str(key);
    out.push('=');
    let clean: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_control() || !c.is_ascii() {
                '?'
            } else {
                c
            }
        })
        .collect();
    if always_quote || clean.contains([',', ';', '=', '"', '\\']) {
        out.push('"');
        for c in clean.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    } else {
        out.push_str(&clean);
    }
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => {
            let b: [u8; 4] = bytes.try_into().ok()?;
            Some(std::net::Ipv4Addr::from(b).to_string())
        }
        16 => {
            let b: [u8; 16] = bytes.try_into().ok()?;
            Some(std::net::Ipv6Addr::from(b).to_string())
        }
        _ => None,
    }
}

/// `cert`'s notAfter as Unix seconds (what
/// `livy_proxy_tls_certificate_expiry_seconds` exports).
pub fn not_after(cert: &CertificateDer<'_>) -> Result<i64, String> {
    let (_, x) = X509Certificate::from_der(cert.as_ref()).map_err(|e| e.to_string())?;
    Ok(x.validity().not_after.timestamp())
}

/// The identity of a TLS connection's verified client certificate, if it
/// sent one (rustls only completes a handshake with a certificate it
/// verified against the client CA bundle).
pub fn of_connection(conn: &rustls::ServerConnection) -> Option<ClientIdentity> {
    let leaf = conn.peer_certificates()?.first()?;
    match ClientIdentity::from_der(leaf) {
        Ok(id) => Some(id),
        Err(e) => {
            tracing::debug!(error = %e, "verified client certificate not readable as an identity");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_value_quotes_the_subject_and_what_needs_it() {
        let id = ClientIdentity {
            subject: "CN=alice, O=Example \"Inc\"".into(),
            sans: vec![
                ("DNS", "alice.example".into()),
                ("URI", "spiffe://x/alice".into()),
                ("Email", "a;b@example".into()),
                ("IP", "10.0.0.1".into()),
            ],
        };
        assert_eq!(
            id.header_value().unwrap(),
            "Subject=\"CN=alice, O=Example \\\"Inc\\\"\";DNS=alice.example;URI=spiffe://x/alice;Email=\"a;b@example\";IP=10.0.0.1"
        );
    }

    #[test]
    fn control_and_non_ascii_bytes_never_reach_the_header() {
        let id = ClientIdentity {
            subject: "CN=al\r\nX-Evil: 1é".into(),
            sans: vec![],
        };
        assert_eq!(id.header_value().unwrap(), "Subject=\"CN=al??X-Evil: 1?\"");
    }

    #[test]
    fn a_certificate_gives_its_subject_sans_and_expiry() {
        let mut params = rcgen::CertificateParams::new(vec![
            "alice.example".to_string(),
            "10.1.2.3".to_string(),
        ])
        .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        params.not_after = rcgen::date_time_ymd(2031, 1, 2);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = CertificateDer::from(cert.der().to_vec());
        let id = ClientIdentity::from_der(&der).unwrap();
        assert_eq!(id.subject, "CN=alice");
        assert_eq!(
            id.sans,
            vec![("DNS", "alice.example".into()), ("IP", "10.1.2.3".into())]
        );
        // 2031-01-02T00:00:00Z
        assert_eq!(not_after(&der).unwrap(), 1_925_078_400);
    }
}
