//! One load connection: TCP (+ TLS), a hyper HTTP/1 or HTTP/2 handshake, and error classes.
//!
//! The connection future is not spawned: [`drive`] polls it in the same task
//! as the request it serves, so a request costs no cross-task wake-ups.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::Target;

/// The body type every load request is sent with.
pub type ReqBody = Full<Bytes>;

/// How a request failed. Each class is counted on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// Nothing listening: the connection was refused.
    Refused,
    /// The server (or something between) closed or reset the connection
    /// before the response was complete.
    Reset,
    /// No complete response within the timeout (connecting included).
    Timeout,
    /// Anything else: TLS, protocol, resolver errors.
    Other,
}

impl ErrorClass {
    /// Every class, in report order.
    pub const ALL: [ErrorClass; 4] = [
        ErrorClass::Refused,
        ErrorClass::Reset,
        ErrorClass::Timeout,
        ErrorClass::Other,
    ];

    /// Lowercase name, as in reports.
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::Refused => "refused",
            ErrorClass::Reset => "reset",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Other => "other",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A failed request: its class and what happened.
#[derive(Debug)]
pub struct RequestError {
    pub class: ErrorClass,
    pub message: String,
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.class.name(), self.message)
    }
}

impl std::error::Error for RequestError {}

impl RequestError {
    pub(crate) fn new(class: ErrorClass, message: impl Into<String>) -> RequestError {
        RequestError {
            class,
            message: message.into(),
        }
    }

    pub(crate) fn timeout() -> RequestError {
        RequestError::new(
            ErrorClass::Timeout,
            "no complete response within the timeout",
        )
    }

    /// Classifies an I/O error from connecting or the TLS handshake.
    pub(crate) fn io(e: &io::Error) -> RequestError {
        RequestError::new(io_class(e.kind()), e.to_string())
    }

    /// Classifies a hyper error by what it says and by its sources.
    pub(crate) fn hyper(e: &hyper::Error) -> RequestError {
        let class = if e.is_timeout() {
            ErrorClass::Timeout
        } else if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
            ErrorClass::Reset
        } else {
            source_class(e).unwrap_or(ErrorClass::Other)
        };
        RequestError::new(class, error_chain(e))
    }

    /// The connection ended while a request was still waiting on it.
    pub(crate) fn closed(e: Option<hyper::Error>) -> RequestError {
        match e {
            Some(e) => {
                let mut r = RequestError::hyper(&e);
                if r.class == ErrorClass::Other {
                    r.class = ErrorClass::Reset;
                }
                r
            }
            None => RequestError::new(ErrorClass::Reset, "the connection closed mid-request"),
        }
    }
}

fn io_class(kind: io::ErrorKind) -> ErrorClass {
    use io::ErrorKind::*;
    match kind {
        ConnectionRefused => ErrorClass::Refused,
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected => {
            ErrorClass::Reset
        }
        TimedOut => ErrorClass::Timeout,
        _ => ErrorClass::Other,
    }
}

/// The class of the first source that says what went wrong (an I/O error,
/// or an HTTP/2 stream reset or GOAWAY).
fn source_class(e: &(dyn std::error::Error + 'static)) -> Option<ErrorClass> {
    let mut cur = e.source();
    while let Some(s) = cur {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return Some(io_class(io.kind()));
        }
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            if let Some(io) = h2.get_io() {
                return Some(io_class(io.kind()));
            }
            if h2.is_reset() || h2.is_go_away() {
                return Some(ErrorClass::Reset);
            }
        }
        cur = s.source();
    }
    None
}

/// `outer: inner: innermost`, without repeats.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// A TCP stream, plain or inside TLS.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

// === impl Stream ===

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

type Io = TokioIo<Stream>;

/// The sending half of a connection.
pub(crate) enum Sender {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
}

/// The connection future itself.
enum Task {
    H1(Pin<Box<http1::Connection<Io, ReqBody>>>),
    H2(Pin<Box<http2::Connection<Io, ReqBody, TokioExecutor>>>),
    /// The connection future finished; the error it ended with, if not yet taken.
    Ended(Option<hyper::Error>),
}

/// The connection future, polled by [`drive`] only, in the task of its user.
pub(crate) struct Driver {
    task: Task,
    wake: Arc<SelfWake>,
    /// A waker for [`SelfWake`], made once.
    waker: Waker,
}

/// An open connection.
pub(crate) struct Conn {
    pub sender: Sender,
    pub driver: Driver,
}

// === impl Conn ===

impl Conn {
    fn new(sender: Sender, task: Task) -> Conn {
        let wake = Arc::new(SelfWake {
            state: AtomicU8::new(IDLE),
            task: Mutex::new(None),
        });
        Conn {
            sender,
            driver: Driver {
                task,
                waker: Waker::from(wake.clone()),
                wake,
            },
        }
    }

    /// Whether it may still carry a request.
    pub fn is_open(&self) -> bool {
        if matches!(self.driver.task, Task::Ended(_)) {
            return false;
        }
        match &self.sender {
            Sender::H1(s) => !s.is_closed(),
            Sender::H2(s) => !s.is_closed(),
        }
    }
}

// === impl Driver ===

impl Driver {
    /// Runs `f` (e.g. queueing a request) without waking the task for it:
    /// [`drive`] polls the connection right after anyway.
    pub fn quiet<R>(&self, f: impl FnOnce() -> R) -> R {
        self.wake.state.store(POLLING, Ordering::Release);
        let r = f();
        self.wake.state.store(IDLE, Ordering::Release);
        r
    }

    /// Polls the connection; once it ends, stays `Ended`.
    fn poll_conn(task: &mut Task, cx: &mut Context<'_>) -> Poll<()> {
        let res = match task {
            Task::H1(c) => c.as_mut().poll(cx),
            Task::H2(c) => c.as_mut().poll(cx),
            Task::Ended(_) => return Poll::Ready(()),
        };
        match res {
            Poll::Ready(r) => {
                *task = Task::Ended(r.err());
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn take_error(&mut self) -> Option<hyper::Error> {
        match &mut self.task {
            Task::Ended(e) => e.take(),
            _ => None,
        }
    }
}

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN: u8 = 2;

/// The waker the connection and the request see. A wake raised while the
/// user's task is itself polling them (the connection handing the response
/// to the request future, the request queue waking the connection) is noted
/// instead of rescheduling the task: [`drive`] polls again at once. Other
/// wakes (socket readiness) go to the task. This saves a task poll per request.
struct SelfWake {
    state: AtomicU8,
    task: Mutex<Option<Waker>>,
}

impl SelfWake {
    fn set_task(&self, waker: &Waker) {
        let mut t = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if !t.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *t = Some(waker.clone());
        }
    }
}

impl Wake for SelfWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self
            .state
            .compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) | Err(WOKEN) => {}
            Err(_) => {
                if let Some(w) = &*self.task.lock().unwrap_or_else(|e| e.into_inner()) {
                    w.wake_by_ref();
                }
            }
        }
    }
}

/// Why [`drive`] gave up on its future.
pub(crate) enum Interrupted {
    /// The deadline passed.
    Timeout,
    /// The connection ended before the future resolved.
    Closed(Option<hyper::Error>),
}

impl From<Interrupted> for RequestError {
    fn from(i: Interrupted) -> RequestError {
        match i {
            Interrupted::Timeout => RequestError::timeout(),
            Interrupted::Closed(e) => RequestError::closed(e),
        }
    }
}

/// A request deadline that costs no timer operation per request.
///
/// The timer is only re-armed when it fires before the current deadline:
/// deadlines move forward by one timeout per request, so the timer fires
/// about once per timeout period instead of being reset for every request.
pub(crate) struct Deadline {
    sleep: Pin<Box<Sleep>>,
    at: Instant,
    /// The timer holds this task's waker: no need to poll it until it fires.
    registered: bool,
}

// === impl Deadline ===

impl Deadline {
    pub fn new(at: Instant) -> Deadline {
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until(at)),
            at,
            registered: false,
        }
    }

    /// Moves the deadline (later, normally; an earlier one re-arms the timer).
    pub fn set(&mut self, at: Instant) {
        if at < self.sleep.deadline() {
            self.sleep.as_mut().reset(at);
            self.registered = false;
        }
        self.at = at;
    }

    /// Whether the deadline has passed; registers for a wake-up if not.
    /// Every caller polls from the same task (one virtual user), so a waker
    /// registered once stays right until the timer fires.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.registered && !self.sleep.is_elapsed() {
            return false;
        }
        while self.sleep.as_mut().poll(cx).is_ready() {
            if Instant::now() >= self.at {
                self.registered = false;
                return true;
            }
            self.sleep.as_mut().reset(self.at);
        }
        self.registered = true;
        false
    }
}

/// Runs `fut` while polling the connection in the same task, until `fut`
/// resolves, the connection ends, or `deadline` passes.
pub(crate) async fn drive<F: Future>(
    driver: &mut Driver,
    deadline: &mut Deadline,
    fut: F,
) -> Result<F::Output, Interrupted> {
    let mut fut = pin!(fut);
    std::future::poll_fn(move |cx| {
        driver.wake.set_task(cx.waker());
        let mut inner = Context::from_waker(&driver.waker);
        // Bounded, so a future that keeps waking itself (a cooperative
        // yield, an exhausted budget) cannot hold the thread.
        for round in 0..4 {
            driver.wake.state.store(POLLING, Ordering::Release);
            // The connection first: it may complete `fut` (write the
            // request, read the response) in this very poll.
            let ended = Driver::poll_conn(&mut driver.task, &mut inner).is_ready();
            let polled = fut.as_mut().poll(&mut inner);
            let woken = driver.wake.state.swap(IDLE, Ordering::AcqRel) == WOKEN;
            if let Poll::Ready(v) = polled {
                return Poll::Ready(Ok(v));
            }
            if ended {
                return Poll::Ready(Err(Interrupted::Closed(driver.take_error())));
            }
            if !woken {
                break;
            }
            if round == 3 {
                cx.waker().wake_by_ref();
            }
        }
        if deadline.poll_expired(cx) {
            return Poll::Ready(Err(Interrupted::Timeout));
        }
        Poll::Pending
    })
    .await
}

/// Runs `fut` until it resolves or `deadline` passes (no connection yet).
pub(crate) async fn until<F: Future>(
    deadline: &mut Deadline,
    fut: F,
) -> Result<F::Output, Interrupted> {
    let mut fut = pin!(fut);
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        if deadline.poll_expired(cx) {
            return Poll::Ready(Err(Interrupted::Timeout));
        }
        Poll::Pending
    })
    .await
}

/// Opens connections to one address, the same way every time.
#[derive(Clone)]
pub(crate) struct Connector {
    addr: SocketAddr,
    http2: bool,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

// === impl Connector ===

impl Connector {
    /// For `target` at `addr`. Fails only on a TLS setup problem.
    pub fn new(
        target: &Target,
        addr: SocketAddr,
        http2: bool,
        insecure: bool,
    ) -> Result<Connector, String> {
        let tls = if target.is_tls() {
            let name = ServerName::try_from(target.host().to_owned())
                .map_err(|e| format!("`{}` is not a TLS server name: {e}", target.host()))?;
            let config = tls_config(http2, insecure)?;
            Some((TlsConnector::from(config), name))
        } else {
            None
        };
        Ok(Connector { addr, http2, tls })
    }

    /// Whether connections are plain TCP carrying HTTP/1.1 (the fast path's kind).
    pub fn is_plain_http1(&self) -> bool {
        self.tls.is_none() && !self.http2
    }

    /// The TCP connection alone (no delay). The caller bounds it in time.
    pub async fn connect_tcp(&self) -> Result<TcpStream, RequestError> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| RequestError::io(&e))?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    /// TCP connect, TLS handshake (if https), HTTP handshake. The caller bounds it in time.
    pub async fn connect(&self) -> Result<Conn, RequestError> {
        let tcp = self.connect_tcp().await?;
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await.map_err(|e| {
                    // A certificate problem in words, with its fix (--insecure
                    // for a self-signed test server).
                    match crate::tls::explain_io(&e) {
                        Some(why) => RequestError::new(ErrorClass::Other, why),
                        None => RequestError::io(&e),
                    }
                })?;
                if self.http2 && tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err(RequestError::new(
                        ErrorClass::Other,
                        "the server did not agree to HTTP/2 (ALPN h2)",
                    ));
                }
                Stream::Tls(Box::new(tls))
            }
        };
        let io = TokioIo::new(stream);
        if self.http2 {
            let (send, conn) = http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await
                .map_err(|e| RequestError::hyper(&e))?;
            Ok(Conn::new(Sender::H2(send), Task::H2(Box::pin(conn))))
        } else {
            let (send, conn) = http1::Builder::new()
                // One flattened write buffer: a load request is small.
                .writev(false)
                .handshake(io)
                .await
                .map_err(|e| RequestError::hyper(&e))?;
            Ok(Conn::new(Sender::H1(send), Task::H1(Box::pin(conn))))
        }
    }
}

fn tls_config(http2: bool, insecure: bool) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth()
    } else {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(config))
}

/// `--insecure`: any certificate is accepted (handshake signatures are still checked).
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
