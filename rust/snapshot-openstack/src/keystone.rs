//! A small Keystone v3 client: get a token and find the image endpoint.
//!
//! Enough for the CLI (and the Python side, if it wants) to upload into a
//! Keystone-protected Glance when given the usual `OS_AUTH_URL` plus a
//! password, an application credential or an existing token (rescoped):
//! one `POST /v3/auth/tokens`, the token from `X-Subject-Token`, the
//! endpoint from the returned catalog.
//! Secrets (password, application credential secret, token) live in
//! [`Secret`] and never reach a message or a log line.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use snapshot_core::{Error, Result, Secret};

use crate::http::{self, TlsOptions};

/// Service name in messages.
const SERVICE: &str = "Keystone";
/// Time limit of the authentication request.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A user, project or domain reference: by id, or by name within a domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Named {
    /// The id; wins over the name when both are given.
    pub id: Option<String>,
    /// The name, looked up in the domain below.
    pub name: Option<String>,
    /// Id of the owning domain (for a name).
    pub domain_id: Option<String>,
    /// Name of the owning domain (for a name).
    pub domain_name: Option<String>,
}

impl Named {
    /// Whether neither id nor name is set.
    pub fn is_empty(&self) -> bool {
        self.id.is_none() && self.name.is_none()
    }

    /// The Keystone JSON reference; a name without a domain is looked up in
    /// the `default` domain, like the OpenStack clients do.
    fn to_json(&self) -> Value {
        if let Some(id) = &self.id {
            return json!({ "id": id });
        }
        let domain = match (&self.domain_id, &self.domain_name) {
            (Some(id), _) => json!({ "id": id }),
            (None, Some(name)) => json!({ "name": name }),
            (None, None) => json!({ "id": "default" }),
        };
        json!({ "name": self.name, "domain": domain })
    }
}

/// How to prove who we are.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// A user and password (`OS_USERNAME`/`OS_USER_ID`, `OS_PASSWORD`).
    Password {
        /// The user.
        user: Named,
        /// The password.
        password: Secret,
    },
    /// An application credential (`OS_APPLICATION_CREDENTIAL_ID` or its
    /// name plus the owning user, and `OS_APPLICATION_CREDENTIAL_SECRET`).
    /// It carries its own project scope.
    ApplicationCredential {
        /// Id of the application credential.
        id: Option<String>,
        /// Name of the application credential (needs `user`).
        name: Option<String>,
        /// Owner, when the credential is given by name.
        user: Named,
        /// The secret.
        secret: Secret,
    },
    /// An existing token (`OS_TOKEN`, `auth_type: token`), exchanged for a
    /// new one scoped to the project and carrying the catalog.
    Token {
        /// The existing token.
        token: Secret,
    },
}

/// What to authenticate against and as whom.
#[derive(Debug, Clone)]
pub struct KeystoneAuth {
    /// Identity endpoint (`OS_AUTH_URL`), with or without `/v3`.
    pub auth_url: String,
    /// The credentials.
    pub credentials: Credentials,
    /// Project to scope a password or token authentication to (ignored for
    /// application credentials, which are scoped already).
    pub project: Named,
    /// Skip TLS certificate verification (test clouds only).
    pub insecure: bool,
    /// Extra CA bundle (PEM) to trust.
    pub ca_file: Option<PathBuf>,
}

/// One endpoint of the service catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Service type (`image`).
    pub service_type: String,
    /// `public`, `internal` or `admin`.
    pub interface: String,
    /// Region id, if any.
    pub region: Option<String>,
    /// The URL.
    pub url: String,
}

/// An authenticated session: a token and the catalog that came with it.
#[derive(Debug, Clone)]
pub struct Session {
    /// The token, to send as `X-Auth-Token`.
    pub token: Secret,
    /// Every endpoint of the catalog.
    pub catalog: Vec<Endpoint>,
}

impl Session {
    /// The URL of `service_type` on `interface` (`public`, `internal`,
    /// `admin`; a `publicURL` style suffix is accepted), in `region` if given.
    pub fn endpoint(
        &self,
        service_type: &str,
        interface: &str,
        region: Option<&str>,
    ) -> Result<String> {
        let interface = interface.strip_suffix("URL").unwrap_or(interface);
        self.catalog
            .iter()
            .find(|ep| {
                ep.service_type == service_type
                    && ep.interface == interface
                    && region.is_none_or(|r| ep.region.as_deref() == Some(r))
            })
            .map(|ep| ep.url.clone())
            .ok_or_else(|| Error::EndpointNotFound {
                service_type: service_type.to_owned(),
                interface: interface.to_owned(),
                region: region
                    .map(|r| format!(" in region {r}"))
                    .unwrap_or_default(),
            })
    }
}

/// Authenticates with `POST /v3/auth/tokens` and returns the token and catalog.
///
/// Errors: [`Error::InvalidOption`] for a bad URL or incomplete credentials,
/// [`Error::Http`] when Keystone refuses (401: wrong credentials),
/// [`Error::Connection`] when it cannot be reached.
pub fn authenticate(auth: &KeystoneAuth) -> Result<Session> {
    let base = http::base_url("auth url", &auth.auth_url)?;
    let base = base
        .strip_suffix("/v3")
        .unwrap_or(&base)
        .trim_end_matches('/');
    let url = format!("{base}/v3/auth/tokens");
    let body = request_body(auth)?;
    let client = http::client_for(
        &TlsOptions {
            insecure: auth.insecure,
            ca_file: auth.ca_file.as_deref(),
        },
        Some(TIMEOUT),
        http::url_host(&url).as_deref(),
    )?;
    let action = "authentication".to_owned();
    let response = client
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .map_err(|err| Error::Connection {
            service: SERVICE,
            action: action.clone(),
            source: Box::new(err),
        })?;
    let status = response.status();
    let token = response
        .headers()
        .get("X-Subject-Token")
        .and_then(|v| v.to_str().ok())
        .map(Secret::new);
    let raw = response.bytes().map_err(|err| Error::Connection {
        service: SERVICE,
        action: action.clone(),
        source: Box::new(err),
    })?;
    if !status.is_success() {
        return Err(Error::Http {
            service: SERVICE,
            action,
            status: status.as_u16(),
            message: http::error_message(status, &raw),
        });
    }
    let token = token.ok_or_else(|| Error::Http {
        service: SERVICE,
        action: action.clone(),
        status: status.as_u16(),
        message: "The answer carries no X-Subject-Token: is OS_AUTH_URL a Keystone v3 endpoint?"
            .into(),
    })?;
    let value: Value = serde_json::from_slice(&raw).map_err(|_| Error::Http {
        service: SERVICE,
        action,
        status: status.as_u16(),
        message: "The answer is not a token document: is OS_AUTH_URL a Keystone v3 endpoint?"
            .into(),
    })?;
    Ok(Session {
        token,
        catalog: parse_catalog(&value),
    })
}

/// The `auth` document of the token request.
fn request_body(auth: &KeystoneAuth) -> Result<Value> {
    let incomplete = |reason: &str| Error::InvalidOption {
        option: "credentials",
        reason: reason.to_owned(),
    };
    let identity = match &auth.credentials {
        Credentials::Password { user, password } => {
            if user.is_empty() {
                return Err(incomplete(
                    "A user name or id is needed with a password (OS_USERNAME or OS_USER_ID)",
                ));
            }
            let mut user_json = user.to_json();
            user_json["password"] = json!(password.expose());
            json!({ "methods": ["password"], "password": { "user": user_json } })
        }
        Credentials::ApplicationCredential {
            id,
            name,
            user,
            secret,
        } => {
            let mut cred = match (id, name) {
                (Some(id), _) => json!({ "id": id }),
                (None, Some(name)) if !user.is_empty() => {
                    json!({ "name": name, "user": user.to_json() })
                }
                _ => {
                    return Err(incomplete(
                        "An application credential needs its id, or its name and its user (OS_APPLICATION_CREDENTIAL_ID)",
                    ));
                }
            };
            cred["secret"] = json!(secret.expose());
            json!({ "methods": ["application_credential"], "application_credential": cred })
        }
        Credentials::Token { token } => {
            json!({ "methods": ["token"], "token": { "id": token.expose() } })
        }
    };
    let mut body = json!({ "auth": { "identity": identity } });
    let scopable = !matches!(auth.credentials, Credentials::ApplicationCredential { .. });
    if scopable && !auth.project.is_empty() {
        body["auth"]["scope"] = json!({ "project": auth.project.to_json() });
    }
    Ok(body)
}

/// Flattens `token.catalog` into endpoints.
fn parse_catalog(value: &Value) -> Vec<Endpoint> {
    let mut out = Vec::new();
    let services = value["token"]["catalog"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for service in services {
        let Some(service_type) = service["type"].as_str() else {
            continue;
        };
        for ep in service["endpoints"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let (Some(interface), Some(url)) = (ep["interface"].as_str(), ep["url"].as_str())
            else {
                continue;
            };
            let region = ep["region_id"]
                .as_str()
                .or_else(|| ep["region"].as_str())
                .map(str::to_owned);
            out.push(Endpoint {
                service_type: service_type.to_owned(),
                interface: interface.to_owned(),
                region,
                url: url.to_owned(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn password_auth() -> KeystoneAuth {
        KeystoneAuth {
            auth_url: "http://k/identity".into(),
            credentials: Credentials::Password {
                user: Named {
                    name: Some("demo".into()),
                    domain_name: Some("Default".into()),
                    ..Named::default()
                },
                password: Secret::new("pw-s3cr3t"),
            },
            project: Named {
                name: Some("demo".into()),
                ..Named::default()
            },
            insecure: false,
            ca_file: None,
        }
    }

    #[test]
    fn password_body() {
        let body = request_body(&password_auth()).unwrap();
        assert_eq!(body["auth"]["identity"]["methods"][0], "password");
        assert_eq!(body["auth"]["identity"]["password"]["user"]["name"], "demo");
        assert_eq!(
            body["auth"]["identity"]["password"]["user"]["domain"]["name"],
            "Default"
        );
        assert_eq!(
            body["auth"]["identity"]["password"]["user"]["password"],
            "pw-s3cr3t"
        );
        assert_eq!(body["auth"]["scope"]["project"]["domain"]["id"], "default");
        assert!(!format!("{:?}", password_auth()).contains("pw-s3cr3t"));
    }

    #[test]
    fn application_credential_body() {
        let mut auth = password_auth();
        auth.credentials = Credentials::ApplicationCredential {
            id: Some("ac1".into()),
            name: None,
            user: Named::default(),
            secret: Secret::new("x"),
        };
        let body = request_body(&auth).unwrap();
        assert_eq!(
            body["auth"]["identity"]["application_credential"]["id"],
            "ac1"
        );
        assert!(
            body["auth"].get("scope").is_none(),
            "application credentials carry their scope"
        );
    }

    #[test]
    fn token_body() {
        let mut auth = password_auth();
        auth.credentials = Credentials::Token {
            token: Secret::new("tok-s3cr3t"),
        };
        let body = request_body(&auth).unwrap();
        assert_eq!(body["auth"]["identity"]["methods"][0], "token");
        assert_eq!(body["auth"]["identity"]["token"]["id"], "tok-s3cr3t");
        assert_eq!(body["auth"]["scope"]["project"]["name"], "demo");
        assert!(!format!("{auth:?}").contains("tok-s3cr3t"));
    }

    #[test]
    fn catalog_lookup() {
        let doc = json!({"token": {"catalog": [
            {"type": "image", "endpoints": [
                {"interface": "internal", "region_id": "R1", "url": "http://int/image"},
                {"interface": "public", "region_id": "R1", "url": "http://pub/image"},
                {"interface": "public", "region_id": "R2", "url": "http://pub2/image"}]},
            {"type": "identity", "endpoints": [{"interface": "public", "url": "http://k"}]}]}});
        let session = Session {
            token: Secret::new("t"),
            catalog: parse_catalog(&doc),
        };
        assert_eq!(
            session.endpoint("image", "public", None).unwrap(),
            "http://pub/image"
        );
        assert_eq!(
            session.endpoint("image", "publicURL", Some("R2")).unwrap(),
            "http://pub2/image"
        );
        assert_eq!(
            session.endpoint("image", "internal", None).unwrap(),
            "http://int/image"
        );
        let err = session.endpoint("image", "admin", None).unwrap_err();
        assert!(matches!(err, Error::EndpointNotFound { .. }), "{err}");
    }
}
