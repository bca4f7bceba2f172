//! Certificate chain verification by node id (no CA, no host names) and the rustls verifiers
//! that run it inside the TLS handshake, on both sides.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use x509_parser::certificate::X509Certificate;
use x509_parser::public_key::PublicKey;

use crate::error::CertChainError;
use crate::nodeid::NodeId;

/// Which node ids a verifier accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Acceptable {
    /// Any valid chain; the leaf's node id is reported.
    Any,
    /// Only chains claiming one of these node ids.
    OneOf(Vec<NodeId>),
}

/// Verifies a chain (leaf first) at `now_secs` (unix seconds) and returns the node id it is
/// accepted for.
///
/// A chain is accepted for node id N if N is the leaf's node id, or a certificate further up
/// claims N and every link from it down to the leaf is signed by its parent. Every certificate
/// from the leaf to the claiming one must be within its validity period and carry an accepted
/// key (Ed25519, ECDSA P-256/P-384, RSA >= 2048 bits).
pub(crate) fn verify_chain(
    chain: &[CertificateDer<'_>],
    accept: &Acceptable,
    now_secs: i64,
) -> Result<NodeId, CertChainError> {
    if chain.is_empty() {
        return Err(CertChainError::Empty);
    }
    let certs = chain
        .iter()
        .enumerate()
        .map(|(i, der)| {
            x509_parser::parse_x509_certificate(der)
                .map(|(_, c)| c)
                .map_err(|e| CertChainError::Broken(format!("certificate {i} does not parse: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ids: Vec<NodeId> = certs
        .iter()
        .map(|c| NodeId::from_spki_der(c.tbs_certificate.subject_pki.raw))
        .collect();
    let claim = match accept {
        Acceptable::Any => 0,
        Acceptable::OneOf(wanted) => {
            ids.iter()
                .position(|id| wanted.contains(id))
                .ok_or_else(|| CertChainError::Unclaimed {
                    expected: wanted
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(" or "),
                })?
        }
    };
    for (i, cert) in certs.iter().enumerate().take(claim + 1) {
        check_key(i, cert)?;
        check_date(i, cert, now_secs)?;
    }
    for i in 0..claim {
        let (child, parent) = (&certs[i], &certs[i + 1]);
        if child.issuer().as_raw() != parent.subject().as_raw() {
            return Err(CertChainError::Broken(format!(
                "certificate {i} is issued by '{}', not by its parent '{}'",
                child.issuer(),
                parent.subject()
            )));
        }
        child
            .verify_signature(Some(parent.public_key()))
            .map_err(|e| {
                CertChainError::SignatureInvalid(format!(
                    "certificate {i} is not signed by its parent: {e}"
                ))
            })?;
    }
    Ok(ids[claim])
}

fn check_key(i: usize, cert: &X509Certificate<'_>) -> Result<(), CertChainError> {
    let spki = cert.public_key();
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) if rsa.key_size() >= 2048 => Ok(()),
        Ok(PublicKey::RSA(rsa)) => Err(CertChainError::KeyInvalid(format!(
            "certificate {i} has a {}-bit RSA key (2048 at least)",
            rsa.key_size()
        ))),
        Ok(PublicKey::EC(_)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            let p256 = x509_parser::oid_registry::OID_EC_P256;
            let p384 = x509_parser::oid_registry::OID_NIST_EC_P384;
            match curve {
                Some(c) if c == p256 || c == p384 => Ok(()),
                _ => Err(CertChainError::KeyInvalid(format!(
                    "certificate {i} has an unsupported EC curve"
                ))),
            }
        }
        Ok(PublicKey::Unknown(_))
            if spki.algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519 =>
        {
            Ok(())
        }
        _ => Err(CertChainError::KeyInvalid(format!(
            "certificate {i} has an unsupported key type ({})",
            spki.algorithm.algorithm
        ))),
    }
}

fn check_date(i: usize, cert: &X509Certificate<'_>, now_secs: i64) -> Result<(), CertChainError> {
    let v = cert.validity();
    let (from, to) = (v.not_before.timestamp(), v.not_after.timestamp());
    if now_secs < from || now_secs > to {
        return Err(CertChainError::DateInvalid(format!(
            "certificate {i} is valid from {} to {}",
            v.not_before, v.not_after
        )));
    }
    Ok(())
}

/// The certificate chain a connection's peer presented (leaf first); empty if none.
pub(crate) fn peer_chain(conn: &quinn::Connection) -> Vec<CertificateDer<'static>> {
    conn.peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .map(|b| *b)
        .unwrap_or_default()
}

/// Where a verifier leaves the typed reason of a refusal, for the code that started the handshake
/// (rustls only carries an alert to the other side).
pub(crate) type VerifyOutcome = Arc<Mutex<Option<CertChainError>>>;

/// The error of a failed handshake: the refused certificate's typed reason when the verifier
/// left one in `outcome`, else `otherwise`.
pub(crate) fn handshake_error(
    outcome: &VerifyOutcome,
    otherwise: impl Into<crate::error::Error>,
) -> crate::error::Error {
    match outcome.lock().expect("outcome lock").take() {
        Some(cert) => cert.into(),
        None => otherwise.into(),
    }
}

/// rustls verifier for both roles: checks the peer's chain against [`Acceptable`], and the
/// handshake signature with the crypto provider.
#[derive(Debug)]
pub(crate) struct NodeIdVerifier {
    accept: Acceptable,
    provider: Arc<CryptoProvider>,
    outcome: VerifyOutcome,
}

impl NodeIdVerifier {
    /// A verifier that accepts `accept` and records refusals in `outcome`.
    pub(crate) fn new(
        accept: Acceptable,
        provider: Arc<CryptoProvider>,
        outcome: VerifyOutcome,
    ) -> Self {
        Self {
            accept,
            provider,
            outcome,
        }
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        verify_chain(&chain, &self.accept, now.as_secs() as i64)
            .map(|_| ())
            .map_err(|e| {
                let mapped = match &e {
                    CertChainError::Empty => rustls::Error::NoCertificatesPresented,
                    CertChainError::DateInvalid(_) => {
                        rustls::Error::InvalidCertificate(CertificateError::Expired)
                    }
                    CertChainError::SignatureInvalid(_) => {
                        rustls::Error::InvalidCertificate(CertificateError::BadSignature)
                    }
                    CertChainError::Broken(_) => {
                        rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
                    }
                    _ => rustls::Error::InvalidCertificate(
                        CertificateError::ApplicationVerificationFailure,
                    ),
                };
                tracing::debug!(error = %e, "refused peer certificate chain");
                *self.outcome.lock().expect("verify outcome lock") = Some(e);
                mapped
            })
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for NodeIdVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now)
            .map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ClientCertVerifier for NodeIdVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now)
            .map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{
        generate_identity, generate_identity_valid, parse_cert_chain_pem, rotate_identity,
    };
    use time::{Duration, OffsetDateTime};

    fn now() -> i64 {
        OffsetDateTime::now_utc().unix_timestamp()
    }

    fn chain(pem: &str) -> Vec<CertificateDer<'static>> {
        parse_cert_chain_pem(pem).unwrap()
    }

    #[test]
    fn leaf_is_accepted_for_its_own_id() {
        let a = generate_identity().unwrap();
        let c = chain(&a.tls.cert_chain_pem);
        assert_eq!(
            verify_chain(&c, &Acceptable::Any, now()).unwrap(),
            a.node_id
        );
        assert_eq!(
            verify_chain(&c, &Acceptable::OneOf(vec![a.node_id]), now()).unwrap(),
            a.node_id
        );
    }

    #[test]
    fn wrong_id_is_unclaimed() {
        let a = generate_identity().unwrap();
        let b = generate_identity().unwrap();
        let err = verify_chain(
            &chain(&a.tls.cert_chain_pem),
            &Acceptable::OneOf(vec![b.node_id]),
            now(),
        )
        .unwrap_err();
        assert!(matches!(err, CertChainError::Unclaimed { .. }), "{err:?}");
        assert_eq!(err.kind(), crate::error::CertChainKind::Unclaimed);
    }

    #[test]
    fn rotated_chain_claims_old_and_new_ids() {
        let a = generate_identity().unwrap();
        let b = rotate_identity(&a.tls).unwrap();
        let c3 = rotate_identity(&b.tls).unwrap();
        let c = chain(&c3.tls.cert_chain_pem);
        assert_eq!(c.len(), 3);
        for id in [a.node_id, b.node_id, c3.node_id] {
            assert_eq!(
                verify_chain(&c, &Acceptable::OneOf(vec![id]), now()).unwrap(),
                id
            );
        }
        assert_eq!(
            verify_chain(&c, &Acceptable::Any, now()).unwrap(),
            c3.node_id
        );
    }

    #[test]
    fn broken_link_is_refused() {
        let a = generate_identity().unwrap();
        let b = rotate_identity(&a.tls).unwrap();
        let stranger = generate_identity().unwrap();
        // b's leaf followed by a stranger's certificate: the stranger did not sign b.
        let mut c = chain(&b.tls.cert_chain_pem);
        c[1] = chain(&stranger.tls.cert_chain_pem).remove(0);
        let err = verify_chain(&c, &Acceptable::OneOf(vec![stranger.node_id]), now()).unwrap_err();
        assert!(matches!(err, CertChainError::Broken(_)), "{err:?}");
    }

    #[test]
    fn forged_signature_is_refused() {
        // A leaf that names `a` as its issuer but is signed by another key: same issuer name,
        // wrong signature.
        let a = generate_identity().unwrap();
        let b = rotate_identity(&a.tls).unwrap();
        let mut c = chain(&b.tls.cert_chain_pem);
        let mut leaf = c[0].to_vec();
        let n = leaf.len();
        leaf[n - 5] ^= 0xff; // flip a byte inside the signature
        c[0] = CertificateDer::from(leaf);
        let err = verify_chain(&c, &Acceptable::OneOf(vec![a.node_id]), now()).unwrap_err();
        assert!(
            matches!(err, CertChainError::SignatureInvalid(_)),
            "{err:?}"
        );
    }

    #[test]
    fn expired_and_future_are_refused() {
        let t = OffsetDateTime::now_utc();
        let expired =
            generate_identity_valid(t - Duration::days(10), t - Duration::days(1)).unwrap();
        let err =
            verify_chain(&chain(&expired.tls.cert_chain_pem), &Acceptable::Any, now()).unwrap_err();
        assert!(matches!(err, CertChainError::DateInvalid(_)), "{err:?}");
        let future =
            generate_identity_valid(t + Duration::days(1), t + Duration::days(10)).unwrap();
        let err =
            verify_chain(&chain(&future.tls.cert_chain_pem), &Acceptable::Any, now()).unwrap_err();
        assert_eq!(err.kind(), crate::error::CertChainKind::DateInvalid);
    }

    #[test]
    fn empty_and_garbage_are_refused() {
        assert_eq!(
            verify_chain(&[], &Acceptable::Any, now()).unwrap_err(),
            CertChainError::Empty
        );
        let junk = [CertificateDer::from(vec![0x30, 0x03, 0x01, 0x02, 0x03])];
        assert!(matches!(
            verify_chain(&junk, &Acceptable::Any, now()),
            Err(CertChainError::Broken(_))
        ));
    }

    #[test]
    fn small_rsa_key_is_refused_and_p256_accepted() {
        let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::default()
            .self_signed(&p256)
            .unwrap();
        let c = [cert.der().clone()];
        assert!(verify_chain(&c, &Acceptable::Any, now()).is_ok());
        // A certificate with a 1024-bit RSA key is checked before any signature use.
        let der = include_bytes!("../../tests/fixtures/rsa1024.der");
        let err = verify_chain(
            &[CertificateDer::from(der.to_vec())],
            &Acceptable::Any,
            now(),
        )
        .unwrap_err();
        assert!(matches!(err, CertChainError::KeyInvalid(_)), "{err:?}");
    }
}
