//! Glance sink: streams image bytes into an existing Glance image with one
//! chunked `PUT /v2/images/{id}/file`, then checks Glance's own digests.
//!
//! The upload runs in its own thread, on a one-thread async runtime whose
//! request body is fed from a bounded channel: [`Sink::write`] hands 1 MiB
//! chunks to it, so memory stays at a few MiB whatever the image size and a
//! slow Glance slows the capture down instead of filling memory. The async
//! client is used because it hands back an answer Glance gives before it has
//! read the whole body (a 413 past `image_size_cap`, a 500): the blocking one
//! reports only the broken body and loses Glance's own message.
//!
//! [`open`] checks up front that the image exists and is `queued`, so a wrong
//! image fails before the disk is read; the `PUT` itself starts only with the
//! first image byte. A forward-only qcow2 comes out only once the first pass
//! over the disk has sized it (minutes on a big disk), and a request body that
//! stays idle that long is cut off by proxies in front of Glance (nginx's
//! `client_body_timeout` is 60 s).
//!
//! What Glance is left with:
//! - after [`Sink::finish`] succeeded: an `active` image holding every byte;
//! - after [`Sink::abort`] (or a dropped sink): the request body is broken off
//!   without its final chunk, so Glance sees a truncated upload, discards the
//!   data and puts the image back to `queued` (abort waits up to 10 s for
//!   that). It never becomes `active` with partial data. Deleting the image is left to the caller, which created it;
//! - after Glance itself died mid-upload: whatever its restart makes of an
//!   image stuck in `saving` (never `active`); the capture fails with
//!   [`Error::Connection`].
//!
//! When Glance answers before it has read the body (a 409 because someone
//! else filled the image after the check, a 500 from its store) it closes the
//! connection with the body unread, and the kernel resets it. Whether the
//! client then hands back Glance's answer depends on which it notices first:
//! hyper's HTTP/1 client fails the whole request on a body write error, even
//! when the answer already sits in the socket, and reqwest gives no hold on
//! the connection to read it anyway. `Expect: 100-continue` would not help:
//! gunicorn, Glance's WSGI server, sends `100 Continue` before Glance even
//! sees the request. So when the upload breaks without an answer, the image
//! is looked up once more and [`Error::UploadBrokenOff`] says what its state
//! shows (filled by someone else, still queued, ...); only when that lookup
//! fails too is the error [`Error::Connection`].

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use reqwest::blocking::Client;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use tokio::sync::mpsc;

use snapshot_core::{Digests, Error, Result, Secret, Sink};

use crate::http::{self, TlsOptions};

/// Service name in messages.
const SERVICE: &str = "Glance";
/// Bytes handed to the upload thread at a time.
const CHUNK: usize = 1 << 20;
/// Chunks queued for the upload thread: bounds memory to about
/// `(QUEUE + 2) * CHUNK`.
const QUEUE: usize = 4;
/// Time limit of the small metadata requests (not of the upload).
const API_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`Sink::abort`] waits for Glance to leave `saving`.
const ABORT_SETTLE: Duration = Duration::from_secs(10);

/// What the writer passes to the upload thread.
enum Chunk {
    /// Image bytes, in order.
    Data(Vec<u8>),
    /// All bytes were sent: end the body cleanly.
    End,
}

/// The request body: chunks from the channel. A sender that goes away
/// without sending [`Chunk::End`] (abort, error, drop) makes the body fail,
/// which makes the client break it off instead of terminating it: Glance
/// must never take a truncated stream for a complete image.
struct ChannelBody {
    rx: mpsc::Receiver<Chunk>,
    ended: bool,
    /// Set once [`Chunk::End`] was taken: every byte went to the client.
    sent_all: Arc<AtomicBool>,
}

impl http_body::Body for ChannelBody {
    type Data = bytes::Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<http_body::Frame<bytes::Bytes>, io::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        Poll::Ready(match std::task::ready!(self.rx.poll_recv(cx)) {
            Some(Chunk::Data(data)) => Some(Ok(http_body::Frame::data(data.into()))),
            Some(Chunk::End) => {
                self.ended = true;
                self.sent_all.store(true, Ordering::Release);
                None
            }
            None => Some(Err(io::Error::other("The capture broke off the upload"))),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

mod read;
pub use read::{GlanceImage, HttpImage, open_image, open_url};

/// A Glance image to fill with the captured data.
#[derive(Debug, Clone)]
pub struct GlanceTarget {
    /// Image service endpoint, such as `http://127.0.0.1:9292` (with or
    /// without a trailing `/v2`).
    pub endpoint: String,
    /// Id of an image in `queued` state created by the caller.
    pub image_id: String,
    /// Keystone token sent as `X-Auth-Token`; `None` for a no-auth Glance.
    pub token: Option<Secret>,
    /// Skip TLS certificate verification (test clouds only).
    pub insecure: bool,
    /// Extra CA bundle (PEM) to trust, for clouds with a private CA.
    pub ca_file: Option<PathBuf>,
}

/// What it takes to start the `PUT`, kept until the first byte is ready.
struct Request {
    client: reqwest::Client,
    url: String,
    token: Option<HeaderValue>,
}

/// Gives the token of the upload when it starts: see
/// [`GlanceSink::with_token_source`].
pub type TokenSource = Box<dyn FnMut() -> Result<Secret> + Send>;

/// A forward-only [`Sink`] uploading into one Glance image.
pub struct GlanceSink {
    image_id: String,
    api: String,
    token: Option<HeaderValue>,
    /// Renews the token when the upload starts.
    token_source: Option<TokenSource>,
    meta_client: Client,
    /// The upload not started yet: it starts with the first chunk.
    request: Option<Request>,
    tx: Option<mpsc::Sender<Chunk>>,
    worker: Option<JoinHandle<Result<()>>>,
    pending: Vec<u8>,
    /// Whether the whole body was handed to the HTTP client.
    sent_all: Arc<AtomicBool>,
}

/// Checks that the image exists and is `queued` and prepares the upload,
/// which starts with the first byte written.
///
/// Errors: [`Error::InvalidOption`] for a bad endpoint, image id, token or CA
/// file; [`Error::Http`] when Glance refuses the lookup (404: create the image
/// first); [`Error::ImageNotQueued`] when the image already holds data or is
/// being filled; [`Error::Connection`] when Glance cannot be reached.
pub fn open(target: &GlanceTarget) -> Result<GlanceSink> {
    let Lookup {
        api,
        token,
        tls,
        client: meta_client,
        image,
    } = look_up(target)?;
    let status = image
        .get("status")
        .and_then(|v| v.as_str())
        .unwrap_or("unknown");
    if status != "queued" {
        return Err(Error::ImageNotQueued {
            service: SERVICE,
            image_id: target.image_id.clone(),
            status: status.to_owned(),
        });
    }

    // The upload itself has no overall time limit: a multi-GiB image over a
    // slow link takes what it takes. A dead Glance still breaks the
    // connection or fails TCP keep-alive. Built now, so that a bad CA file
    // fails before the disk is read.
    let client = http::async_client_for(&tls, http::url_host(&api).as_deref())?;
    let url = format!("{api}/images/{}/file", target.image_id);
    tracing::info!(image_id = %target.image_id, endpoint = %api, "Glance image is queued; the upload starts with the first byte");
    Ok(GlanceSink {
        image_id: target.image_id.clone(),
        api,
        token: token.clone(),
        token_source: None,
        meta_client,
        request: Some(Request { client, url, token }),
        tx: None,
        worker: None,
        pending: Vec::with_capacity(CHUNK),
        sent_all: Arc::new(AtomicBool::new(false)),
    })
}

/// A target image as Glance's API shows it, with what it took to ask.
struct Lookup<'a> {
    /// The API base URL (ending in `/v2`).
    api: String,
    token: Option<HeaderValue>,
    tls: TlsOptions<'a>,
    /// A client for short API calls (with a timeout).
    client: Client,
    /// The image record.
    image: serde_json::Value,
}

/// Checks the target's endpoint, image id and token, and reads the image
/// record.
fn look_up(target: &GlanceTarget) -> Result<Lookup<'_>> {
    let api = api_base(&target.endpoint)?;
    check_image_id(&target.image_id)?;
    let token = token_header(target)?;
    let tls = TlsOptions {
        insecure: target.insecure,
        ca_file: target.ca_file.as_deref(),
    };
    let client = http::client_for(&tls, Some(API_TIMEOUT), http::url_host(&api).as_deref())?;
    let image = get_image(&client, &api, &target.image_id, token.as_ref())?;
    Ok(Lookup {
        api,
        token,
        tls,
        client,
        image,
    })
}

/// The upload thread: one PUT whose body comes from `rx`, on a one-thread
/// runtime.
fn upload(
    request: Request,
    image_id: String,
    rx: mpsc::Receiver<Chunk>,
    sent_all: Arc<AtomicBool>,
) -> Result<()> {
    let action = format!("upload of image {image_id}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Error::Internal(format!("Cannot start the upload runtime: {err}")))?;
    runtime.block_on(async move {
        let body = reqwest::Body::wrap(ChannelBody {
            rx,
            ended: false,
            sent_all,
        });
        let mut put = request
            .client
            .put(&request.url)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(body);
        if let Some(token) = request.token {
            put = put.header("X-Auth-Token", token);
        }
        tracing::debug!(image_id = %image_id, "Glance upload request started");
        let response = put.send().await.map_err(|err| connection(&action, err))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // Glance may answer before it read the whole body (a size cap or
        // quota exceeded, a server error) and close the connection: its
        // message may then be cut short, the status still says what it is.
        let body = response.bytes().await.unwrap_or_default();
        let mut message = http::error_message(status, &body);
        if status == reqwest::StatusCode::UNAUTHORIZED {
            message.push_str(" (check the token: it may have expired)");
        }
        Err(Error::Http {
            service: SERVICE,
            action,
            status: status.as_u16(),
            message,
        })
    })
}

impl GlanceSink {
    /// Has the upload take a new token from `source` when it starts, instead
    /// of the target's.
    ///
    /// A forward-only qcow2 sends its first byte only once the whole disk has
    /// been read, which can take longer than a Keystone token lives (its
    /// `[token] expiration`); a caller that can authenticate again (the
    /// step's configured credential) gives its login here. The target's token
    /// still checks up front that the image is queued. An error of `source`
    /// fails the capture.
    pub fn with_token_source(mut self, source: TokenSource) -> Self {
        self.token_source = Some(source);
        self
    }

    /// Hands the pending bytes to the upload thread.
    fn flush_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.pending, Vec::with_capacity(CHUNK));
        self.send(Chunk::Data(data))
    }

    /// Starts the upload thread, and with it the `PUT`.
    fn start(&mut self, request: Request) -> Result<()> {
        let (tx, rx) = mpsc::channel::<Chunk>(QUEUE);
        let image_id = self.image_id.clone();
        let sent_all = Arc::clone(&self.sent_all);
        let worker = thread::Builder::new()
            .name("glance-upload".into())
            .spawn(move || upload(request, image_id, rx, sent_all))
            .map_err(|err| Error::Internal(format!("Cannot start the upload thread: {err}")))?;
        tracing::info!(image_id = %self.image_id, "Uploading into Glance image");
        self.tx = Some(tx);
        self.worker = Some(worker);
        Ok(())
    }

    fn send(&mut self, chunk: Chunk) -> Result<()> {
        if let Some(mut request) = self.request.take() {
            if let Some(source) = self.token_source.as_mut() {
                let token = secret_header(&source()?)?;
                tracing::debug!(image_id = %self.image_id, "New token for the upload");
                request.token = Some(token.clone());
                self.token = Some(token);
            }
            self.start(request)?;
        }
        let Some(tx) = &self.tx else {
            return Err(Error::Internal(
                "Glance upload written after it ended".into(),
            ));
        };
        // The writer is a plain thread, never inside the upload's runtime.
        if tx.blocking_send(chunk).is_ok() {
            return Ok(());
        }
        // The upload thread stopped reading: the request ended early, so its
        // result says why (Glance refused the data or the connection broke).
        self.tx = None;
        Err(match self.upload_result() {
            Err(err) => err,
            Ok(()) => Error::Internal("Glance accepted the upload before all data was sent".into()),
        })
    }

    /// Waits for the upload thread; a broken connection is explained by the
    /// image's state (see [`GlanceSink::broken_off`]).
    fn upload_result(&mut self) -> Result<()> {
        match self.join() {
            Err(err @ Error::Connection { .. }) => Err(self.broken_off(err)),
            other => other,
        }
    }

    /// Turns the transport error of a broken upload into what the image's
    /// state shows: Glance may well have answered (and closed) while the body
    /// was still being written, and the client then reports only the broken
    /// write. One lookup, on this error path only; when it fails too, Glance
    /// is really unreachable and `err` stands.
    fn broken_off(&self, err: Error) -> Error {
        let Error::Connection { source, .. } = err else {
            return err;
        };
        let id = &self.image_id;
        let sent_all = self.sent_all.load(Ordering::Acquire);
        let detail = match get_image(&self.meta_client, &self.api, id, self.token.as_ref()) {
            Ok(image) => {
                let status = image
                    .get("status")
                    .and_then(|v| v.as_str())
                    .unwrap_or("unknown");
                tracing::warn!(image_id = %id, status, sent_all, "Glance upload broken off without an answer");
                broken_off_detail(id, status, sent_all)
            }
            Err(Error::Http { status: 404, .. }) => {
                format!("image {id} no longer exists: it was deleted during the upload")
            }
            Err(lookup) => {
                tracing::warn!(image_id = %id, error = %lookup, "Glance upload broken off; image status unknown");
                return Error::Connection {
                    service: SERVICE,
                    action: format!("upload of image {id}"),
                    source,
                };
            }
        };
        Error::UploadBrokenOff {
            service: SERVICE,
            image_id: id.clone(),
            detail,
            source,
        }
    }

    /// Waits for the upload thread and returns its result.
    fn join(&mut self) -> Result<()> {
        match self.worker.take() {
            Some(worker) => worker.join().unwrap_or_else(|_| {
                Err(Error::Internal("The Glance upload thread panicked".into()))
            }),
            None => Err(Error::Internal("Glance upload already ended".into())),
        }
    }
}

impl Sink for GlanceSink {
    fn seekable(&self) -> bool {
        false
    }

    fn write(&mut self, mut buf: &[u8]) -> Result<()> {
        while !buf.is_empty() {
            let room = CHUNK - self.pending.len();
            let take = room.min(buf.len());
            self.pending.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.pending.len() == CHUNK {
                self.flush_pending()?;
            }
        }
        Ok(())
    }

    fn write_at(&mut self, _offset: u64, _buf: &[u8]) -> Result<()> {
        Err(Error::Internal(
            "A Glance upload is forward-only: write_at is not supported".into(),
        ))
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.flush_pending()?;
        self.send(Chunk::End)?;
        self.tx = None;
        self.upload_result()?;
        tracing::info!(image_id = %self.image_id, "Glance accepted the upload");
        Ok(())
    }

    fn abort(mut self: Box<Self>) {
        // Dropping the sender without Chunk::End makes the body read fail, so
        // the body is broken off rather than ended.
        self.pending = Vec::new();
        self.tx = None;
        if self.request.take().is_some() {
            // Not a byte was sent: Glance never saw an upload.
            tracing::warn!(image_id = %self.image_id, "Glance upload abandoned before it started");
            return;
        }
        if self.worker.is_some() {
            let _ = self.join();
        }
        // Glance notices the broken body a moment later and only then puts
        // the image back to queued: wait for that (briefly) so callers see
        // the final state.
        let deadline = std::time::Instant::now() + ABORT_SETTLE;
        loop {
            match get_image(
                &self.meta_client,
                &self.api,
                &self.image_id,
                self.token.as_ref(),
            ) {
                Ok(image) => {
                    let status = image
                        .get("status")
                        .and_then(|v| v.as_str())
                        .unwrap_or("unknown");
                    if status == "saving" && std::time::Instant::now() < deadline {
                        thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                    tracing::warn!(image_id = %self.image_id, status, "Glance upload broken off");
                }
                Err(err) => {
                    tracing::warn!(
                        image_id = %self.image_id,
                        error = %err,
                        "Glance upload broken off; image status unknown"
                    );
                }
            }
            break;
        }
    }

    fn describe(&self) -> String {
        format!("glance:{}", self.image_id)
    }

    fn buffer_bytes(&self) -> u64 {
        // The chunk being filled, the queue, the chunk the upload thread
        // holds and the one the HTTP client is writing.
        ((QUEUE + 3) * CHUNK) as u64
    }
}

/// What the status of an image whose upload broke off without an answer
/// says happened. Until the body's last chunk was sent, Glance cannot have
/// made the image active with this upload's data.
fn broken_off_detail(id: &str, status: &str, sent_all: bool) -> String {
    match (status, sent_all) {
        ("active", false) => format!(
            "image {id} is now active, so someone else filled it after the check (its data is kept): create a new image and capture into it"
        ),
        ("queued", false) => format!(
            "image {id} is still queued and holds no data: Glance refused the upload before storing it (Glance's log says why: a size cap, a quota, a policy, its store), then capture again"
        ),
        ("saving", false) => format!(
            "image {id} is saving: Glance stopped storing this upload part way (a size cap or a quota) or someone else is uploading into it; this capture's partial data never becomes active: create a new image and capture into it"
        ),
        ("active", true) => format!(
            "every byte was sent and image {id} is active, but without Glance's answer the upload is not verified: compare its size and checksum with the capture, or capture again into a new image"
        ),
        ("queued", true) => format!(
            "every byte was sent, but image {id} is still queued: Glance did not store the upload: capture again"
        ),
        (status, true) => format!(
            "every byte was sent, and image {id} is {status}: capture again into a new image"
        ),
        (status, false) => {
            format!("image {id} is {status}: create a new image and capture into it")
        }
    }
}

/// Checks that Glance stored exactly the image that was sent: status
/// `active`, `size` equal to `image_size`, `checksum` equal to the MD5 and
/// `os_hash_value` equal to the SHA-512 (or SHA-256, whichever
/// `os_hash_algo` names).
///
/// Errors: [`Error::VerificationFailed`] naming the first field that differs
/// with both values; [`Error::Http`] / [`Error::Connection`] when the image
/// cannot be read back.
pub fn verify(target: &GlanceTarget, digests: &Digests, image_size: u64) -> Result<()> {
    let image = look_up(target)?.image;
    check_image(&target.image_id, &image, digests, image_size)?;
    tracing::info!(image_id = %target.image_id, "Glance's size and digests match the image sent");
    Ok(())
}

/// Adds or replaces string properties of the target image (one JSON patch
/// request): how the CLI records a capture's provenance
/// ([`snapshot_core::provenance::properties`]) on the image it filled.
///
/// Errors: [`Error::Http`] when Glance refuses (the token may have expired
/// during a long upload), [`Error::Connection`] when it cannot be reached.
pub fn set_properties(
    target: &GlanceTarget,
    properties: &std::collections::BTreeMap<String, String>,
) -> Result<()> {
    let lookup = look_up(target)?;
    let action = format!(
        "recording of the snapshot properties on image {}",
        target.image_id
    );
    let patch: Vec<serde_json::Value> = properties
        .iter()
        .map(|(name, value)| serde_json::json!({"op": "add", "path": format!("/{name}"), "value": value}))
        .collect();
    let body = serde_json::to_vec(&patch)
        .map_err(|err| Error::Internal(format!("Cannot serialise a JSON patch: {err}")))?;
    let mut request = lookup
        .client
        .patch(format!("{}/images/{}", lookup.api, target.image_id))
        .header(CONTENT_TYPE, "application/openstack-images-v2.1-json-patch")
        .body(body);
    if let Some(token) = &lookup.token {
        request = request.header("X-Auth-Token", token.clone());
    }
    let response = request.send().map_err(|err| connection(&action, err))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.bytes().map_err(|err| connection(&action, err))?;
        return Err(Error::Http {
            service: SERVICE,
            action,
            status: status.as_u16(),
            message: http::error_message(status, &body),
        });
    }
    tracing::info!(image_id = %target.image_id, count = properties.len(), "Recorded the snapshot properties");
    Ok(())
}

/// The comparison behind [`verify`], on an image record.
fn check_image(
    image_id: &str,
    image: &serde_json::Value,
    digests: &Digests,
    image_size: u64,
) -> Result<()> {
    let failed = |detail: String| Error::VerificationFailed {
        service: SERVICE,
        image_id: image_id.to_owned(),
        detail,
    };
    let text = |key: &str| {
        image
            .get(key)
            .and_then(|v| v.as_str())
            .map(str::to_ascii_lowercase)
    };
    let status = text("status").unwrap_or_else(|| "unknown".into());
    if status != "active" {
        return Err(failed(format!("status is {status}, expected active")));
    }
    match image.get("size").and_then(|v| v.as_u64()) {
        Some(size) if size == image_size => {}
        Some(size) => {
            return Err(failed(format!(
                "size is {size} bytes, {image_size} were sent"
            )));
        }
        None => return Err(failed("Glance reports no size".into())),
    }
    let checksum = text("checksum");
    if let Some(checksum) = &checksum
        && *checksum != digests.md5
    {
        return Err(failed(format!(
            "checksum (MD5) is {checksum}, the image sent has {}",
            digests.md5
        )));
    }
    let hash_value = text("os_hash_value");
    if let Some(value) = &hash_value {
        let algo = text("os_hash_algo").unwrap_or_default();
        let expected = match algo.as_str() {
            "sha512" => &digests.sha512,
            "sha256" => &digests.sha256,
            other => {
                return Err(failed(format!(
                    "os_hash_algo is {other:?}, which ironic-snapshot does not compute: set Glance's hashing_algorithm to sha512"
                )));
            }
        };
        if value != expected {
            return Err(failed(format!(
                "os_hash_value ({algo}) is {value}, the image sent has {expected}"
            )));
        }
    }
    if checksum.is_none() && hash_value.is_none() {
        return Err(failed(
            "Glance reports neither checksum nor os_hash_value".into(),
        ));
    }
    Ok(())
}

/// `{endpoint}/v2`, whether the endpoint was given with or without `/v2`
/// and trailing slashes.
fn api_base(endpoint: &str) -> Result<String> {
    let base = http::base_url("glance endpoint", endpoint)?;
    let base = base
        .strip_suffix("/v2")
        .unwrap_or(&base)
        .trim_end_matches('/');
    Ok(format!("{base}/v2"))
}

/// Image ids go into URL paths: allow only what Glance ids are made of.
fn check_image_id(id: &str) -> Result<()> {
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error::InvalidOption {
            option: "glance image",
            reason: format!(
                "{id:?} is not an image id: give the id (a UUID) of a queued Glance image"
            ),
        });
    }
    Ok(())
}

fn token_header(target: &GlanceTarget) -> Result<Option<HeaderValue>> {
    target.token.as_ref().map(secret_header).transpose()
}

/// A token as a header value marked sensitive (never shown by `Debug`).
fn secret_header(token: &Secret) -> Result<HeaderValue> {
    let mut value = HeaderValue::from_str(token.expose()).map_err(|_| Error::InvalidOption {
        option: "token",
        reason: "The token holds characters not allowed in an HTTP header".into(),
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// GETs an image record.
fn get_image(
    client: &Client,
    api: &str,
    image_id: &str,
    token: Option<&HeaderValue>,
) -> Result<serde_json::Value> {
    let action = format!("lookup of image {image_id}");
    let mut request = client.get(format!("{api}/images/{image_id}"));
    if let Some(token) = token {
        request = request.header("X-Auth-Token", token.clone());
    }
    let response = request.send().map_err(|err| connection(&action, err))?;
    let status = response.status();
    let body = response.bytes().map_err(|err| connection(&action, err))?;
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(Error::Http {
            service: SERVICE,
            action,
            status: status.as_u16(),
            message: format!(
                "No image {image_id}: create the image first (disk format qcow2 or raw, container format bare) and pass its id"
            ),
        });
    }
    if !status.is_success() {
        let mut message = http::error_message(status, &body);
        if status == reqwest::StatusCode::UNAUTHORIZED {
            message.push_str(" (check the token: it may have expired)");
        }
        return Err(Error::Http {
            service: SERVICE,
            action,
            status: status.as_u16(),
            message,
        });
    }
    serde_json::from_slice(&body).map_err(|err| Error::Http {
        service: SERVICE,
        action,
        status: status.as_u16(),
        message: format!(
            "The answer is not an image record ({err}): is the endpoint really Glance?"
        ),
    })
}

fn connection(action: &str, err: reqwest::Error) -> Error {
    Error::Connection {
        service: SERVICE,
        action: action.to_owned(),
        source: Box::new(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn digests() -> Digests {
        Digests {
            md5: "aa".into(),
            sha256: "bb".into(),
            sha512: "cc".into(),
        }
    }

    fn image() -> serde_json::Value {
        json!({"status": "active", "size": 10, "checksum": "aa", "os_hash_algo": "sha512", "os_hash_value": "cc"})
    }

    #[test]
    fn endpoint_forms() {
        for form in [
            "http://h:9292",
            "http://h:9292/",
            "http://h:9292/v2",
            "http://h:9292/v2/",
        ] {
            assert_eq!(api_base(form).unwrap(), "http://h:9292/v2", "{form}");
        }
        assert_eq!(api_base("https://h/image").unwrap(), "https://h/image/v2");
    }

    #[test]
    fn image_ids() {
        assert!(check_image_id("0b0e7b53-7f07-4d2f-9c0b-5a3d1f1f7a11").is_ok());
        for bad in ["", "../x", "a/b", "a?b"] {
            assert!(check_image_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn verify_accepts_match() {
        check_image("i", &image(), &digests(), 10).unwrap();
    }

    #[test]
    fn verify_names_the_field() {
        let cases = [
            ("status", json!("saving"), "status is saving"),
            ("size", json!(11), "size is 11 bytes"),
            ("checksum", json!("ab"), "checksum (MD5) is ab"),
            ("os_hash_value", json!("cd"), "os_hash_value (sha512) is cd"),
            (
                "os_hash_algo",
                json!("sha3_512"),
                "os_hash_algo is \"sha3_512\"",
            ),
        ];
        for (key, value, expect) in cases {
            let mut record = image();
            record[key] = value;
            let err = check_image("i", &record, &digests(), 10).unwrap_err();
            assert!(matches!(err, Error::VerificationFailed { .. }));
            assert!(err.to_string().contains(expect), "{err}");
        }
    }

    #[test]
    fn verify_needs_some_digest() {
        let record =
            json!({"status": "active", "size": 10, "checksum": null, "os_hash_value": null});
        let err = check_image("i", &record, &digests(), 10).unwrap_err();
        assert!(err.to_string().contains("neither"), "{err}");
    }

    #[test]
    fn broken_off_states() {
        // Before the last chunk went out, an active image is someone else's.
        assert!(broken_off_detail("i", "active", false).contains("someone else filled it"));
        // After it, it may be this capture's: never said to be someone else's.
        let sent = broken_off_detail("i", "active", true);
        assert!(
            sent.contains("not verified") && !sent.contains("someone else"),
            "{sent}"
        );
        assert!(broken_off_detail("i", "queued", false).contains("still queued"));
        assert!(broken_off_detail("i", "queued", true).contains("did not store"));
        assert!(broken_off_detail("i", "killed", false).contains("image i is killed"));
    }

    #[test]
    fn token_never_in_debug() {
        let target = GlanceTarget {
            endpoint: "http://h".into(),
            image_id: "i".into(),
            token: Some(Secret::new("s3cr3t-token")),
            insecure: false,
            ca_file: None,
        };
        let header = token_header(&target).unwrap().unwrap();
        assert!(!format!("{header:?}").contains("s3cr3t"));
        assert!(!format!("{target:?}").contains("s3cr3t"));
    }
}
