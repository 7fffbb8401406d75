//! Kerberos (SASL GSSAPI) for the proxy's ZooKeeper session, through the
//! system's MIT GSSAPI library.
//!
//! `zookeeper-client` runs the GSSAPI exchange itself (its `sasl-gssapi`
//! feature) but only with the process's *default* initiator credentials:
//! it has no option for a client principal or a keytab. MIT Kerberos takes
//! both from the environment, so [`install`] points it there once at start,
//! before any thread exists:
//! - `KRB5_CLIENT_KTNAME` = `zk-kerberos-keytab`: MIT gets (and, before
//!   they expire, renews) tickets from the keytab by itself, no `kinit`;
//! - `KRB5CCNAME` = a private in-memory cache, so the operator's own
//!   `kinit` cache is neither used nor overwritten.
//!
//! The default credentials are those of the cache's principal, else of the
//! keytab's *first* entry. So before every new session [`login`] acquires
//! the configured principal's credentials by name, which puts that
//! principal into the private cache (and fails, clearly, when the keytab
//! lacks it or the KDC refuses): the crate's default then is that
//! principal. Without a keytab the process's usual cache (`KRB5CCNAME`, a
//! `kinit` or `k5start` kept elsewhere) is used as it is.
//!
//! The crate reports a failed GSSAPI step only as a lost connection, which
//! would read as an outage; [`diagnose`] repeats the client's first step
//! for each host and names the Kerberos failure instead.
//!
//! Every call here may talk to the KDC and blocks: callers run it on a
//! blocking thread.

use libgssapi::context::{ClientCtx, CtxFlags};
use libgssapi::credential::{Cred, CredUsage};
use libgssapi::name::Name;
use libgssapi::oid::{GSS_MECH_KRB5, GSS_NT_HOSTBASED_SERVICE, GSS_NT_KRB5_PRINCIPAL, OidSet};

use super::zk_security::{ZkKerberos, ZkSecurityError};

/// The private credential cache `install` points MIT Kerberos at.
pub const PRIVATE_CCACHE: &str = "MEMORY:livy-proxy-zookeeper";

/// MIT's `KRB5_KDC_UNREACH` as GSSAPI's minor status: no KDC answered.
const KDC_UNREACHABLE: u32 = -1_765_328_228_i32 as u32;

fn krb5_mechs() -> Result<OidSet, libgssapi::error::Error> {
    let mut set = OidSet::new()?;
    set.add(&GSS_MECH_KRB5)?;
    Ok(set)
}

/// Points MIT Kerberos at the keytab and a private cache (see the module
/// docs) and logs the principal in once: a principal the keytab lacks, or
/// keys the KDC refuses, are start-up errors; a KDC that does not answer is
/// not (each session's [`login`] tries again and says why).
///
/// # Safety
/// Sets environment variables: call it before any other thread exists
/// (in `main`, before the runtime is built), as nothing else may read the
/// environment meanwhile.
pub unsafe fn install(k: &ZkKerberos) -> Result<(), ZkSecurityError> {
    if let Some(keytab) = &k.keytab {
        // SAFETY: the caller guarantees a single-threaded process.
        unsafe {
            std::env::set_var("KRB5_CLIENT_KTNAME", keytab);
            std::env::set_var("KRB5CCNAME", PRIVATE_CCACHE);
        }
    }
    let Some(principal) = &k.principal else {
        return Ok(());
    };
    let bad = |problem: String| ZkSecurityError {
        key: "zk-kerberos-principal",
        problem,
    };
    let name = Name::new(principal.as_bytes(), Some(&GSS_NT_KRB5_PRINCIPAL))
        .map_err(|e| bad(format!("{principal:?} is not a Kerberos principal: {e}")))?;
    let mechs = krb5_mechs().map_err(|e| bad(e.to_string()))?;
    // With an empty cache and a keytab, MIT gets the tickets right here.
    match Cred::acquire(Some(&name), None, CredUsage::Initiate, Some(&mechs)) {
        Ok(_) => Ok(()),
        Err(e) if e.minor == KDC_UNREACHABLE => Ok(()),
        Err(e) => {
            let with = match &k.keytab {
                Some(keytab) => format!("zk-kerberos-keytab {}", keytab.display()),
                None => "the credential cache (no zk-kerberos-keytab)".to_string(),
            };
            Err(bad(format!("{principal}: cannot log in with {with}: {e}")))
        }
    }
}

/// Gets (or renews) the initiator's tickets before a new session: the
/// configured principal by name, else the default credentials. Returns the
/// principal logged in, or why there are no usable credentials.
pub fn login(k: &ZkKerberos) -> Result<String, String> {
    let mechs = krb5_mechs().map_err(|e| e.to_string())?;
    let name = match &k.principal {
        None => None,
        Some(p) => Some(
            Name::new(p.as_bytes(), Some(&GSS_NT_KRB5_PRINCIPAL))
                .map_err(|e| format!("{p:?} is not a Kerberos principal: {e}"))?,
        ),
    };
    let who = k.principal.as_deref().unwrap_or("the default principal");
    let cred = Cred::acquire(name.as_ref(), None, CredUsage::Initiate, Some(&mechs))
        .map_err(|e| format!("Kerberos login as {who} failed: {e}"))?;
    // Asking for the lifetime makes MIT get the tickets now (from the
    // keytab, into the cache) instead of at the crate's first step.
    let info = cred
        .info()
        .map_err(|e| format!("Kerberos login as {who} failed: {e}"))?;
    if info.lifetime.is_zero() {
        return Err(format!(
            "Kerberos login as {who} failed: its tickets have expired"
        ));
    }
    Ok(info.name.to_string())
}

/// The service name the client asks a ticket for at `host` (`service@host`,
/// host-based: MIT turns it into `service/host@REALM`).
pub fn target(k: &ZkKerberos, host: &str) -> String {
    format!("{}@{}", k.service, k.server_host.as_deref().unwrap_or(host))
}

/// The first Kerberos failure of the client's first GSSAPI step towards
/// any of `hosts`, as the crate would take it; `None` when every host's
/// step works (the fault is elsewhere).
pub fn diagnose(k: &ZkKerberos, hosts: &[String]) -> Option<String> {
    let mechs = match krb5_mechs() {
        Ok(m) => m,
        Err(e) => return Some(e.to_string()),
    };
    for host in hosts {
        let target = target(k, host);
        let step = || -> Result<(), libgssapi::error::Error> {
            let cred = Cred::acquire(None, None, CredUsage::Initiate, Some(&mechs))?;
            let name = Name::new(target.as_bytes(), Some(&GSS_NT_HOSTBASED_SERVICE))?;
            let mut ctx = ClientCtx::new(Some(cred), name, CtxFlags::all(), Some(&GSS_MECH_KRB5));
            ctx.step(None, None).map(|_| ())
        };
        if let Err(e) = step() {
            return Some(format!(
                "Kerberos ticket for ZooKeeper {target} failed: {e}"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_names_the_service_at_the_host_or_the_override() {
        let mut k = ZkKerberos {
            principal: None,
            keytab: None,
            service: "zookeeper".into(),
            server_host: None,
        };
        assert_eq!(target(&k, "zk1.example"), "zookeeper@zk1.example");
        k.server_host = Some("zk.example".into());
        k.service = "zk".into();
        assert_eq!(target(&k, "10.0.0.1"), "zk@zk.example");
    }
}
