//! Node identities: an Ed25519 key with a self-signed certificate, PEM encoded, and the parsed
//! form rustls needs. Key rotation is a chain: the new leaf signed by the previous key.

use rcgen::{CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

use crate::error::{Error, Result};
use crate::nodeid::NodeId;

/// PEM material of an identity, as the JS API carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// PKCS#8 private key of the leaf certificate.
    pub key_private_pem: String,
    /// Certificate chain, leaf first.
    pub cert_chain_pem: String,
}

/// A generated identity: its node id and its PEM material.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Node id of the leaf key.
    pub node_id: NodeId,
    /// The PEM material.
    pub tls: TlsConfig,
}

/// How long generated certificates are valid (from one hour ago, to tolerate clock skew).
const VALIDITY: Duration = Duration::days(3650);

fn params_for(
    node_id: &NodeId,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_id.to_string());
    params.distinguished_name = dn;
    params.not_before = not_before;
    params.not_after = not_after;
    params.is_ca = IsCa::ExplicitNoCa;
    params
}

fn node_id_of_key(key: &KeyPair) -> NodeId {
    NodeId::from_spki_der(&rcgen::PublicKeyData::subject_public_key_info(key))
}

/// Generates a fresh Ed25519 identity with a self-signed certificate valid for ten years.
pub fn generate_identity() -> Result<Identity> {
    let now = OffsetDateTime::now_utc();
    generate_identity_valid(now - Duration::hours(1), now + VALIDITY)
}

/// Generates an Ed25519 identity valid between the given instants (tests use it for expiry).
pub fn generate_identity_valid(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<Identity> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(tls_err)?;
    let node_id = node_id_of_key(&key);
    let cert = params_for(&node_id, not_before, not_after)
        .self_signed(&key)
        .map_err(tls_err)?;
    Ok(Identity {
        node_id,
        tls: TlsConfig {
            key_private_pem: key.serialize_pem(),
            cert_chain_pem: cert.pem(),
        },
    })
}

/// Rotates `previous` to a fresh Ed25519 key: the new leaf is signed by the previous key and the
/// chain is the new leaf followed by the previous chain, so peers that pinned any earlier node id
/// still accept it.
pub fn rotate_identity(previous: &TlsConfig) -> Result<Identity> {
    let old_key = KeyPair::from_pem(&previous.key_private_pem).map_err(tls_err)?;
    let old_id = node_id_of_key(&old_key);
    let now = OffsetDateTime::now_utc();
    let issuer_params = params_for(&old_id, now, now + VALIDITY);
    let issuer = Issuer::new(issuer_params, &old_key);
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(tls_err)?;
    let node_id = node_id_of_key(&key);
    let cert = params_for(&node_id, now - Duration::hours(1), now + VALIDITY)
        .signed_by(&key, &issuer)
        .map_err(tls_err)?;
    Ok(Identity {
        node_id,
        tls: TlsConfig {
            key_private_pem: key.serialize_pem(),
            cert_chain_pem: format!("{}{}", cert.pem(), previous.cert_chain_pem),
        },
    })
}

fn tls_err(e: impl std::fmt::Display) -> Error {
    Error::InvalidTlsConfig(e.to_string())
}

/// Node id of the first certificate in a PEM string.
pub fn node_id_from_certificate_pem(pem: &str) -> Result<NodeId> {
    let certs = parse_cert_chain_pem(pem)?;
    let first = certs
        .first()
        .ok_or_else(|| tls_err("no certificate in PEM"))?;
    node_id_from_cert_der(first)
}

/// Node id of a DER certificate.
pub fn node_id_from_cert_der(der: &[u8]) -> Result<NodeId> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| tls_err(format!("bad certificate: {e}")))?;
    Ok(NodeId::from_spki_der(cert.tbs_certificate.subject_pki.raw))
}

/// Parses a PEM chain into DER certificates (leaf first).
pub fn parse_cert_chain_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let mut reader = pem.as_bytes();
    let certs = rustls_pemfile::certs(&mut reader)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_err(format!("bad certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(tls_err("certChainPem holds no certificate"));
    }
    Ok(certs)
}

/// Encodes DER certificates as PEM strings.
pub fn certs_to_pem(certs: &[CertificateDer<'_>]) -> Vec<String> {
    certs
        .iter()
        .map(|c| pem_encode("CERTIFICATE", c.as_ref()))
        .collect()
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// An identity parsed for use in TLS: chain, key, and the leaf's node id.
#[derive(Debug)]
pub struct LoadedIdentity {
    /// Node id of the leaf certificate.
    pub node_id: NodeId,
    /// Chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Private key of the leaf.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for LoadedIdentity {
    fn clone(&self) -> Self {
        Self {
            node_id: self.node_id,
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl LoadedIdentity {
    /// Parses and checks PEM material: the key must be usable and belong to the leaf.
    pub fn from_tls_config(tls: &TlsConfig) -> Result<Self> {
        let chain = parse_cert_chain_pem(&tls.cert_chain_pem)?;
        let mut reader = tls.key_private_pem.as_bytes();
        let key = rustls_pemfile::private_key(&mut reader)
            .map_err(|e| tls_err(format!("bad private key PEM: {e}")))?
            .ok_or_else(|| tls_err("keyPrivatePem holds no private key"))?;
        let signing = rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| tls_err(format!("unusable private key: {e}")))?;
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0])
            .map_err(|e| tls_err(format!("bad leaf certificate: {e}")))?;
        let leaf_spki = leaf.tbs_certificate.subject_pki.raw;
        if let Some(public) = signing.public_key() {
            if public.as_ref() != leaf_spki {
                return Err(tls_err(
                    "keyPrivatePem does not belong to the first certificate of certChainPem",
                ));
            }
        }
        Ok(Self {
            node_id: NodeId::from_spki_der(leaf_spki),
            chain,
            key,
        })
    }

    /// A secret derived from the private key for `purpose` (e.g. the QUIC stateless-reset key):
    /// stable across restarts with the same identity, useless for recovering the key.
    pub fn derived_secret(&self, purpose: &str) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"keynet derived secret\0");
        ctx.update(purpose.as_bytes());
        ctx.update(b"\0");
        ctx.update(self.key.secret_der());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// Generates a fresh identity and loads it.
    pub fn generate() -> Result<Self> {
        Self::from_tls_config(&generate_identity()?.tls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_identity_round_trips() {
        let id = generate_identity().unwrap();
        assert_eq!(
            node_id_from_certificate_pem(&id.tls.cert_chain_pem).unwrap(),
            id.node_id
        );
        let loaded = LoadedIdentity::from_tls_config(&id.tls).unwrap();
        assert_eq!(loaded.node_id, id.node_id);
        assert_eq!(loaded.chain.len(), 1);
    }

    #[test]
    fn rotation_appends_previous_chain() {
        let a = generate_identity().unwrap();
        let b = rotate_identity(&a.tls).unwrap();
        assert_ne!(a.node_id, b.node_id);
        let chain = parse_cert_chain_pem(&b.tls.cert_chain_pem).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(node_id_from_cert_der(&chain[1]).unwrap(), a.node_id);
        assert_eq!(
            LoadedIdentity::from_tls_config(&b.tls).unwrap().node_id,
            b.node_id
        );
    }

    #[test]
    fn mismatched_key_is_refused() {
        let a = generate_identity().unwrap();
        let b = generate_identity().unwrap();
        let mixed = TlsConfig {
            key_private_pem: a.tls.key_private_pem,
            cert_chain_pem: b.tls.cert_chain_pem,
        };
        let err = LoadedIdentity::from_tls_config(&mixed).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }

    #[test]
    fn garbage_pem_is_refused() {
        let bad = TlsConfig {
            key_private_pem: "nope".into(),
            cert_chain_pem: "nope".into(),
        };
        assert!(matches!(
            LoadedIdentity::from_tls_config(&bad),
            Err(Error::InvalidTlsConfig(_))
        ));
    }
}
