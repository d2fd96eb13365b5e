//! A TLS-terminating proxy on loopback: clients speak TLS to it, it speaks plain TCP to
//! the broker behind it. Tansu 0.6.0 accepts `--cert`/`--key` but serves plain TCP
//! anyway, so this is how a test reaches it over SASL_SSL. The certificate is
//! self-signed for 127.0.0.1; `ca_pem` is the file a client trusts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub struct TlsProxy {
    pub addr: SocketAddr,
    pub ca_pem: PathBuf,
}

impl TlsProxy {
    /// Listen on `port` and forward every connection to `upstream`.
    pub async fn start(port: u16, upstream: SocketAddr, dir: &Path) -> TlsProxy {
        let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let cert_pem = key.cert.pem();
        let ca_pem = dir.join("proxy-ca.pem");
        std::fs::write(&ca_pem, &cert_pem).unwrap();
        let identity = native_tls::Identity::from_pkcs8(
            cert_pem.as_bytes(),
            key.key_pair.serialize_pem().as_bytes(),
        )
        .unwrap();
        let acceptor =
            tokio_native_tls::TlsAcceptor::from(native_tls::TlsAcceptor::new(identity).unwrap());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return; // a client that does not speak TLS
                    };
                    let Ok(mut broker) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
                });
            }
        });
        TlsProxy { addr, ca_pem }
    }
}
