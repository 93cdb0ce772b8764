//! Reading an image back from Glance, for `verify`: its record, one
//! streaming download of its data, and ranged reads of its qcow2 metadata.

use reqwest::blocking::Client;
use reqwest::header::HeaderValue;

use snapshot_core::{Error, ImageReadAt as ReadAt, Result};

use super::{GlanceTarget, SERVICE, look_up};
use crate::http;

/// An image in Glance to read.
pub struct GlanceImage {
    /// The image record (`size`, `checksum`, `os_hash_value`, properties).
    pub record: serde_json::Value,
    /// Its data.
    pub data: HttpImage,
}

/// Image data behind an HTTP(S) URL: Glance's `/file`, or any server that
/// answers ranged GETs (`206 Partial Content`).
pub struct HttpImage {
    /// Who answers, for errors (`Glance`, `The server`).
    service: &'static str,
    url: String,
    token: Option<HeaderValue>,
    /// No overall timeout: a download of many GiB takes what it takes.
    client: Client,
}

/// Image data at `url` (http or https, the system's CA certificates, no
/// credentials). Errors: [`Error::InvalidOption`] for a URL that is not
/// http(s).
pub fn open_url(url: &str) -> Result<HttpImage> {
    let parsed = reqwest::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"));
    if parsed.is_none() {
        return Err(Error::InvalidOption {
            option: "FILE",
            reason: format!("{url:?} is not an http or https URL"),
        });
    }
    let tls = http::TlsOptions {
        insecure: false,
        ca_file: None,
    };
    Ok(HttpImage {
        service: "The server",
        url: url.to_owned(),
        token: None,
        client: http::client_for(&tls, None, http::url_host(url).as_deref())?,
    })
}

/// Looks the image up. Errors as for the upload's lookup: [`Error::Http`]
/// (404 when there is no such image), [`Error::Connection`],
/// [`Error::InvalidOption`] for a bad endpoint, id or token.
pub fn open_image(target: &GlanceTarget) -> Result<GlanceImage> {
    let lookup = look_up(target)?;
    let client = http::client_for(&lookup.tls, None, http::url_host(&lookup.api).as_deref())?;
    Ok(GlanceImage {
        record: lookup.image,
        data: HttpImage {
            service: SERVICE,
            url: format!("{}/images/{}/file", lookup.api, target.image_id),
            token: lookup.token,
            client,
        },
    })
}

impl HttpImage {
    fn get(&self, range: Option<String>) -> Result<reqwest::blocking::Response> {
        let action = "download of the image data".to_owned();
        let mut request = self.client.get(&self.url);
        if let Some(token) = &self.token {
            request = request.header("X-Auth-Token", token.clone());
        }
        if let Some(range) = range {
            request = request.header(reqwest::header::RANGE, range);
        }
        let response = request.send().map_err(|err| Error::Connection {
            service: self.service,
            action: action.clone(),
            source: Box::new(err),
        })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().unwrap_or_default();
            return Err(Error::Http {
                service: self.service,
                action,
                status: status.as_u16(),
                message: http::error_message(status, &body),
            });
        }
        Ok(response)
    }

    /// The whole image data, as a stream to read once.
    pub fn download(&self) -> Result<reqwest::blocking::Response> {
        self.get(None)
    }
}

impl ReadAt for HttpImage {
    /// One ranged GET per read: the qcow2 check reads only the metadata.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let range = format!("bytes={offset}-{}", offset + buf.len() as u64 - 1);
        let response = self.get(Some(range)).map_err(std::io::Error::other)?;
        if response.status() != reqwest::StatusCode::PARTIAL_CONTENT {
            return Err(std::io::Error::other(format!(
                "{} answered {} to a ranged read, not 206: it cannot serve parts of the image",
                self.service,
                response.status()
            )));
        }
        let body = response.bytes().map_err(std::io::Error::other)?;
        if body.len() != buf.len() {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        buf.copy_from_slice(&body);
        Ok(())
    }
}
