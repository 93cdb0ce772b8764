//! HTTP plumbing shared by the Glance sink and the Keystone client: one way
//! to build a TLS client, normalise endpoints and turn error answers into
//! short messages.
//!
//! TLS is rustls with the webpki root set compiled in (the static CLI must
//! not depend on the host's OpenSSL or CA files), plus an optional PEM bundle.
//! Host names are resolved by hickory (reads `/etc/resolv.conf` and
//! `/etc/hosts` itself), so a static binary needs no NSS modules.

use std::path::Path;
use std::time::Duration;

use snapshot_core::{Error, Result};

/// How long to wait for a TCP connection (and TLS handshake) to be set up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Keep-alive probes find a peer that vanished without closing the connection.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
/// Longest service message kept in an error.
const MAX_MESSAGE: usize = 400;

/// TLS settings of a connection.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions<'a> {
    /// Accept any server certificate (test clouds only).
    pub insecure: bool,
    /// PEM bundle of extra CA certificates to trust.
    pub ca_file: Option<&'a Path>,
}

/// Builds a blocking client. `timeout` bounds each whole request; `None`
/// lets an upload take as long as it needs (a dead peer is still found by
/// the connection breaking or by TCP keep-alive). It resolves `host` from
/// `/etc/hosts` (or as `localhost`) itself. hickory reads `/etc/hosts` only once it has read
/// `/etc/resolv.conf`, and a minimal ramdisk or chroot may have only the
/// former: names listed there must still work.
pub fn client_for(
    tls: &TlsOptions<'_>,
    timeout: Option<Duration>,
    host: Option<&str>,
) -> Result<reqwest::blocking::Client> {
    // The blocking builder keeps its own whole-request timeout (30 s unless
    // set), so it is always set here.
    reqwest::blocking::ClientBuilder::from(builder(tls, host)?)
        .timeout(timeout)
        .build()
        .map_err(|err| Error::Internal(format!("Cannot build the HTTP client: {err}")))
}

/// An async client set up like [`client_for`], without any overall time
/// limit, for a streamed upload: unlike the blocking client, it hands back
/// an answer the service gives before it has read the whole body (an
/// error), instead of only the broken body.
pub fn async_client_for(tls: &TlsOptions<'_>, host: Option<&str>) -> Result<reqwest::Client> {
    builder(tls, host)?
        .build()
        .map_err(|err| Error::Internal(format!("Cannot build the HTTP client: {err}")))
}

/// The settings every client shares: TLS, timeouts of the connection, user
/// agent, `/etc/hosts` lookups.
fn builder(tls: &TlsOptions<'_>, host: Option<&str>) -> Result<reqwest::ClientBuilder> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .user_agent(concat!("ironic-snapshot/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_keepalive(TCP_KEEPALIVE)
        .danger_accept_invalid_certs(tls.insecure);
    if let Some(path) = tls.ca_file {
        let pem = std::fs::read(path).map_err(|err| Error::InvalidOption {
            option: "ca_file",
            reason: format!("Cannot read CA bundle {}: {err}", path.display()),
        })?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| Error::InvalidOption {
                option: "ca_file",
                reason: format!(
                    "{} holds no PEM certificates: give a PEM CA bundle",
                    path.display()
                ),
            })?;
        if certs.is_empty() {
            return Err(Error::InvalidOption {
                option: "ca_file",
                reason: format!(
                    "{} holds no PEM certificates: give a PEM CA bundle",
                    path.display()
                ),
            });
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some(host) = host
        && host.parse::<std::net::IpAddr>().is_err()
    {
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        let addrs = hosts_lookup(&hosts, host);
        if !addrs.is_empty() {
            builder = builder.resolve_to_addrs(host, &addrs);
        }
    }
    Ok(builder)
}

/// Addresses of `host` in a hosts file's text; `localhost` is loopback
/// even when the file does not say so. Ports are 0: the URL's port is used.
fn hosts_lookup(hosts: &str, host: &str) -> Vec<std::net::SocketAddr> {
    let mut addrs: Vec<std::net::SocketAddr> = hosts
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let ip: std::net::IpAddr = fields.next()?.parse().ok()?;
            fields
                .any(|name| name.eq_ignore_ascii_case(host))
                .then_some((ip, 0).into())
        })
        .collect();
    if addrs.is_empty() && host.eq_ignore_ascii_case("localhost") {
        addrs.push((std::net::Ipv4Addr::LOCALHOST, 0).into());
    }
    addrs
}

/// The host of a URL, for [`client_for`].
pub fn url_host(url: &str) -> Option<String> {
    reqwest::Url::parse(url)
        .ok()?
        .host_str()
        .map(|h| h.trim_matches(['[', ']']).to_owned())
}

/// Checks and normalises a service base URL: `http(s)://host[:port][/path]`
/// without trailing `/`. Credentials, query strings and fragments are refused
/// because URLs end up in messages and logs.
pub fn base_url(option: &'static str, url: &str) -> Result<String> {
    let invalid = |reason: &str| Error::InvalidOption {
        option,
        reason: reason.to_owned(),
    };
    let parsed = reqwest::Url::parse(url.trim())
        .map_err(|_| invalid("Not a URL: give one such as https://cloud.example.org:9292"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("Only http:// and https:// URLs are supported"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("The URL has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            "The URL must not carry credentials: pass a token instead",
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid("The URL must not have a query string or fragment"));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

/// A short, single-line message out of an error answer's body: the
/// `message`/`title`/`description` of a JSON body (OpenStack services use
/// `{"error": {"message": ...}}`, webob `{"message": ...}`), else the text of
/// an HTML or plain body, without the status line webob and proxies repeat
/// at its top. Falls back to the status's reason phrase.
pub fn error_message(status: reqwest::StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let from_json = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|value| {
            let inner = value.get("error").unwrap_or(&value);
            ["message", "description", "title"]
                .iter()
                .find_map(|key| inner.get(key).and_then(|v| v.as_str()).map(str::to_owned))
        });
    let message = from_json.unwrap_or_else(|| strip_html(&text));
    let message: String = message.split_whitespace().collect::<Vec<_>>().join(" ");
    let reason = status.canonical_reason().unwrap_or("");
    // webob repeats the status line ("409 Conflict") before the detail, with
    // its own reason phrase ("413 Request Entity Too Large"), and so does the
    // <title> of an HTML page.
    let title = html_title(&text).filter(|t| !t.is_empty());
    let full = message.as_str();
    let mut message = full;
    for line in [title.clone(), Some(format!("{} {reason}", status.as_u16()))]
        .into_iter()
        .flatten()
    {
        message = message
            .strip_prefix(line.as_str())
            .unwrap_or(message)
            .trim();
    }
    if message.is_empty() {
        return reason.to_owned();
    }
    let mut short = match title {
        // A proxy's own page has only its name below the title: keep the
        // title's phrase ("Request Time-out (nginx/1.22.1)").
        Some(title) if message.len() != full.len() && !message.contains(' ') => {
            let phrase = title
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim();
            format!("{phrase} ({message})")
        }
        _ => message.to_owned(),
    };
    if short.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !short.is_char_boundary(cut) {
            cut -= 1;
        }
        short.truncate(cut);
        short.push_str("...");
    }
    short
}

/// The `<title>` of an HTML page, whitespace collapsed.
fn html_title(text: &str) -> Option<String> {
    let start = text.find("<title>")? + "<title>".len();
    let end = start + text[start..].find("</title>")?;
    Some(
        text[start..end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Drops tags and the `<head>` of an HTML page, keeps the text.
fn strip_html(text: &str) -> String {
    let body = match (text.find("<body"), text.rfind("</body>")) {
        (Some(start), Some(end)) if start < end => &text[start..end],
        _ => text,
    };
    let mut out = String::with_capacity(body.len());
    let mut in_tag = false;
    for ch in body.chars() {
        match ch {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            _ if !in_tag => out.push(ch),
            _ => {}
        }
    }
    out.replace("&nbsp;", " ")
        .replace("&#39;", "'")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn normalises_urls() {
        assert_eq!(
            base_url("x", "http://127.0.0.1:9292/").unwrap(),
            "http://127.0.0.1:9292"
        );
        assert_eq!(
            base_url("x", "https://h/image/v2/").unwrap(),
            "https://h/image/v2"
        );
        for bad in [
            "ftp://h",
            "not a url",
            "http://u:p@h/",
            "http://h/?token=1",
            "http://h/#x",
        ] {
            assert!(base_url("x", bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn secrets_in_urls_are_not_echoed() {
        let err = base_url("x", "http://admin:hunter2@h/")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn hosts_file() {
        let text = "127.0.0.1 localhost\n# 10.0.0.9 glance.test\n10.0.0.1 glance.test glance # comment\n::1 glance\n";
        let ips = |h: &str| {
            hosts_lookup(text, h)
                .iter()
                .map(|a| a.ip().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(ips("glance.test"), ["10.0.0.1"]);
        assert_eq!(ips("GLANCE"), ["10.0.0.1", "::1"]);
        assert!(ips("other").is_empty());
        assert_eq!(
            hosts_lookup("", "localhost")[0].ip().to_string(),
            "127.0.0.1"
        );
        assert_eq!(
            url_host("http://glance.test:9292/v2").as_deref(),
            Some("glance.test")
        );
    }

    #[test]
    fn webob_html_message() {
        let body = b"<html>\n <head>\n  <title>409 Conflict</title>\n </head>\n <body>\n  <h1>409 Conflict</h1>\n  Image status transition from active to saving is not allowed<br /><br />\n\n\n\n </body>\n</html>";
        assert_eq!(
            error_message(StatusCode::CONFLICT, body),
            "Image status transition from active to saving is not allowed"
        );
    }

    #[test]
    fn json_messages() {
        let keystone = br#"{"error":{"code":401,"message":"The request you have made requires authentication.","title":"Unauthorized"}}"#;
        assert_eq!(
            error_message(StatusCode::UNAUTHORIZED, keystone),
            "The request you have made requires authentication."
        );
        assert_eq!(error_message(StatusCode::NOT_FOUND, b""), "Not Found");
        let webob =
            br#"{"title": "Forbidden", "message": "Not allowed to upload image data for image 1"}"#;
        assert_eq!(
            error_message(StatusCode::FORBIDDEN, webob),
            "Not allowed to upload image data for image 1"
        );
        let title_only = br#"{"error": {"title": "Service Unavailable"}}"#;
        assert_eq!(
            error_message(StatusCode::SERVICE_UNAVAILABLE, title_only),
            "Service Unavailable"
        );
    }

    #[test]
    fn webob_status_line_with_its_own_reason_phrase() {
        // webob calls 413 "Request Entity Too Large", http "Payload Too Large".
        let body = b"<html>\n <head>\n  <title>413 Request Entity Too Large</title>\n </head>\n <body>\n  <h1>413 Request Entity Too Large</h1>\n  The incoming image is too large: The provided image is too large.<br /><br />\n\n\n\n </body>\n</html>";
        assert_eq!(
            error_message(StatusCode::PAYLOAD_TOO_LARGE, body),
            "The incoming image is too large: The provided image is too large."
        );
    }

    #[test]
    fn plain_and_proxy_bodies() {
        // webob's plain text form.
        assert_eq!(
            error_message(
                StatusCode::GONE,
                b"410 Gone\n\nImage 1 could not be found after upload.\n\n   "
            ),
            "Image 1 could not be found after upload."
        );
        // nginx's own error page says nothing beyond its title.
        let nginx = b"<html>\r\n<head><title>408 Request Time-out</title></head>\r\n<body>\r\n<center><h1>408 Request Time-out</h1></center>\r\n<hr><center>nginx/1.22.1</center>\r\n</body>\r\n</html>\r\n";
        assert_eq!(
            error_message(StatusCode::REQUEST_TIMEOUT, nginx),
            "Request Time-out (nginx/1.22.1)"
        );
        let long = "x ".repeat(1000);
        let short = error_message(StatusCode::INTERNAL_SERVER_ERROR, long.as_bytes());
        assert!(
            short.len() <= MAX_MESSAGE + 3 && short.ends_with("..."),
            "{short}"
        );
    }
}
