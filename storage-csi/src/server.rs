//! CSI endpoints on unix sockets: parsing `CSI_ENDPOINT`, serving a driver, and connecting
//! to one.

use std::future::Future;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint, Server};

use crate::driver::{DriverServices, HostPathDriver};
use crate::error::CsiError;
use crate::proto::controller_server::ControllerServer;
use crate::proto::identity_server::IdentityServer;
use crate::proto::node_server::NodeServer;

/// The socket path of a CSI endpoint: `unix:///path`, `unix:/path` or a plain absolute path.
pub fn parse_endpoint(endpoint: &str) -> Result<PathBuf, CsiError> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    let invalid = |reason: &str| CsiError::InvalidEndpoint {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    };
    if endpoint.contains("://") && !endpoint.starts_with("unix://") {
        return Err(invalid("only unix sockets are supported"));
    }
    if !path.starts_with('/') {
        return Err(invalid("the socket path must be absolute"));
    }
    Ok(PathBuf::from(path))
}

/// Serves `driver`'s Identity, Controller and Node services on a unix socket at `socket`
/// until `shutdown` completes. A stale socket file is replaced; the socket is removed on
/// return.
pub async fn serve(
    driver: HostPathDriver,
    socket: &Path,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), CsiError> {
    let listener = bind(socket)?;
    serve_listener(driver, listener, socket, shutdown).await
}

/// Binds the unix socket a driver will serve on, replacing a stale socket file.
pub fn bind(socket: &Path) -> Result<UnixListener, CsiError> {
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| CsiError::io("create socket dir", parent, e))?;
    }
    match std::fs::remove_file(socket) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(CsiError::io("remove stale socket", socket, err))
        }
        _ => {}
    }
    UnixListener::bind(socket).map_err(|e| CsiError::io("bind socket", socket, e))
}

/// Serves on an already bound listener (see [`bind`]); removes `socket` on return.
pub async fn serve_listener(
    driver: HostPathDriver,
    listener: UnixListener,
    socket: &Path,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), CsiError> {
    let services = DriverServices::new(driver);
    tracing::info!(socket = %socket.display(), "CSI driver serving");
    let result = Server::builder()
        .add_service(IdentityServer::new(services.clone()))
        .add_service(ControllerServer::new(services.clone()))
        .add_service(NodeServer::new(services))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .map_err(|source| CsiError::Transport {
            endpoint: socket.display().to_string(),
            source,
        });
    let _ = std::fs::remove_file(socket);
    result
}

/// A driver served on a socket by a background task.
#[derive(Debug)]
pub struct RunningDriver {
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), CsiError>>,
}

impl RunningDriver {
    /// Binds `socket` and serves `driver` on it in a tokio task.
    pub fn spawn(driver: HostPathDriver, socket: impl Into<PathBuf>) -> Result<Self, CsiError> {
        let socket = socket.into();
        let listener = bind(&socket)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let path = socket.clone();
        let task = tokio::spawn(async move {
            serve_listener(driver, listener, &path, async {
                let _ = stopped.await;
            })
            .await
        });
        Ok(RunningDriver {
            socket,
            stop: Some(stop),
            task,
        })
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops serving and waits for the server to finish.
    pub async fn stop(mut self) -> Result<(), CsiError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(result) => result,
            Err(err) => Err(CsiError::io(
                "driver task",
                &self.socket,
                std::io::Error::other(err.to_string()),
            )),
        }
    }
}

impl Drop for RunningDriver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A gRPC channel to the driver at a unix socket. The channel connects lazily and
/// reconnects after the driver restarts.
pub fn connect(socket: &Path) -> Result<Channel, CsiError> {
    let path = socket.to_path_buf();
    // The URI is required by the HTTP/2 layer but never dialled: the connector below
    // opens the unix socket instead.
    let endpoint =
        Endpoint::try_from("http://[::1]:50051").map_err(|source| CsiError::Transport {
            endpoint: socket.display().to_string(),
            source,
        })?;
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            parse_endpoint("unix:///run/csi.sock").unwrap(),
            Path::new("/run/csi.sock")
        );
        assert_eq!(
            parse_endpoint("unix:/run/csi.sock").unwrap(),
            Path::new("/run/csi.sock")
        );
        assert_eq!(
            parse_endpoint("/run/csi.sock").unwrap(),
            Path::new("/run/csi.sock")
        );
        assert!(parse_endpoint("tcp://127.0.0.1:1").is_err());
        assert!(parse_endpoint("unix://relative.sock").is_err());
    }
}
