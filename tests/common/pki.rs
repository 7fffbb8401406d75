//! Test certificates, made with rcgen: a CA and the server and client
//! certificates it signs, as PEM text. The TLS tests (the listeners, TLS
//! to Livy, ZooKeeper over TLS) each write what they need from these into
//! their own temp dir.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
};

/// A test CA.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    /// A self-signed CA named `name`.
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        Ca { issuer }
    }

    /// The CA's certificate.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `names` (host names or IP addresses) with the
    /// common name `cn`: (certificate PEM, key PEM).
    pub fn issue(&self, names: &[&str], cn: &str) -> (String, String) {
        self.sign(names, cn, |_| {})
    }

    /// A server certificate for 127.0.0.1 and localhost with `serial`
    /// (so that a test can tell which one is served).
    pub fn server(&self, serial: u64) -> (String, String) {
        self.sign(&["127.0.0.1", "localhost"], "livy-proxy", |p| {
            p.serial_number = Some(SerialNumber::from(serial));
        })
    }

    /// A client certificate for `cn` (SANs `{cn}.example` and a SPIFFE
    /// URI), expired if asked.
    pub fn client(&self, cn: &str, expired: bool) -> (String, String) {
        let dns = format!("{cn}.example");
        self.sign(&[&dns], cn, |p| {
            p.subject_alt_names.push(rcgen::SanType::URI(
                format!("spiffe://test/{cn}")
                    .try_into()
                    .expect("SPIFFE URI"),
            ));
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            if expired {
                p.not_before = rcgen::date_time_ymd(2000, 1, 1);
                p.not_after = rcgen::date_time_ymd(2001, 1, 1);
            }
        })
    }

    /// A client certificate for `cn` that expires on 1 January `year`
    /// (for a test that reads the expiry back).
    pub fn client_until(&self, cn: &str, year: i32) -> (String, String) {
        self.sign(&[], cn, |p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            p.not_after = rcgen::date_time_ymd(year, 1, 1);
        })
    }

    fn sign(
        &self,
        names: &[&str],
        cn: &str,
        more: impl FnOnce(&mut CertificateParams),
    ) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("certificate params");
        params.distinguished_name.push(DnType::CommonName, cn);
        more(&mut params);
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        (cert.pem(), key.serialize_pem())
    }
}
