//! A stub HTTP server for CLI tests: an axum router on 127.0.0.1:<ephemeral>, on a runtime of
//! its own (the CLI under test runs as a blocking child process); stops when dropped.

use std::net::SocketAddr;

use axum::Router;

pub struct StubServer {
    pub addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

impl StubServer {
    pub fn serve(app: Router) -> StubServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move { axum::serve(listener, app).await });
        StubServer {
            addr,
            _runtime: runtime,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
