//! Where to upload and with which token: flags, then the usual `OS_*`
//! environment, then (when only Keystone credentials are given) a token and
//! the image endpoint from Keystone.

use std::path::PathBuf;

use snapshot_core::keystone::{self, Credentials, KeystoneAuth, Named};
use snapshot_core::options::{GlanceTarget, Secret};
use snapshot_core::{Error, Result};

/// Glance and Keystone settings as given on the command line (flags already
/// merged with their main environment variable by clap).
// No `Debug`: the struct holds secrets.
#[derive(Default, Clone, clap::Args)]
#[command(next_help_heading = "Glance upload")]
pub struct CloudArgs {
    /// Upload into this Glance image (created beforehand, status queued)
    /// instead of writing a file
    #[arg(long, value_name = "ID")]
    pub glance_image: Option<String>,

    /// Image service endpoint, with or without /v2 [env: OS_IMAGE_ENDPOINT,
    /// OS_IMAGE_URL]; taken from the Keystone catalog when not given
    #[arg(long, value_name = "URL")]
    pub glance_endpoint: Option<String>,

    /// Keystone token sent to Glance [env: OS_TOKEN, OS_AUTH_TOKEN]; prefer
    /// the environment: command lines are visible to every local user
    #[arg(long, value_name = "TOKEN")]
    pub os_token: Option<String>,

    /// Do not verify TLS certificates (test clouds only) [env: OS_INSECURE]
    #[arg(long)]
    pub insecure: bool,

    /// CA bundle (PEM) to trust besides the built-in roots
    #[arg(long, value_name = "FILE", env = "OS_CACERT")]
    pub os_cacert: Option<PathBuf>,

    /// Keystone v3 URL, used when no token is given
    #[arg(
        long,
        value_name = "URL",
        env = "OS_AUTH_URL",
        help_heading = "Keystone"
    )]
    pub os_auth_url: Option<String>,

    /// User name (password authentication)
    #[arg(
        long,
        value_name = "NAME",
        env = "OS_USERNAME",
        help_heading = "Keystone"
    )]
    pub os_username: Option<String>,

    /// User id (password authentication)
    #[arg(long, value_name = "ID", env = "OS_USER_ID", help_heading = "Keystone")]
    pub os_user_id: Option<String>,

    /// Password; prefer the environment variable
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "OS_PASSWORD",
        hide_env_values = true,
        help_heading = "Keystone"
    )]
    pub os_password: Option<String>,

    /// Domain name of the user (default domain when neither name nor id is given)
    #[arg(
        long,
        value_name = "NAME",
        env = "OS_USER_DOMAIN_NAME",
        help_heading = "Keystone"
    )]
    pub os_user_domain_name: Option<String>,

    /// Domain id of the user
    #[arg(
        long,
        value_name = "ID",
        env = "OS_USER_DOMAIN_ID",
        help_heading = "Keystone"
    )]
    pub os_user_domain_id: Option<String>,

    /// Project to scope the token to [env: OS_PROJECT_NAME, OS_TENANT_NAME]
    #[arg(long, value_name = "NAME", help_heading = "Keystone")]
    pub os_project_name: Option<String>,

    /// Project id to scope the token to [env: OS_PROJECT_ID, OS_TENANT_ID]
    #[arg(long, value_name = "ID", help_heading = "Keystone")]
    pub os_project_id: Option<String>,

    /// Domain name of the project
    #[arg(
        long,
        value_name = "NAME",
        env = "OS_PROJECT_DOMAIN_NAME",
        help_heading = "Keystone"
    )]
    pub os_project_domain_name: Option<String>,

    /// Domain id of the project
    #[arg(
        long,
        value_name = "ID",
        env = "OS_PROJECT_DOMAIN_ID",
        help_heading = "Keystone"
    )]
    pub os_project_domain_id: Option<String>,

    /// Application credential id (instead of a password)
    #[arg(
        long,
        value_name = "ID",
        env = "OS_APPLICATION_CREDENTIAL_ID",
        help_heading = "Keystone"
    )]
    pub os_application_credential_id: Option<String>,

    /// Application credential name (with the user it belongs to)
    #[arg(
        long,
        value_name = "NAME",
        env = "OS_APPLICATION_CREDENTIAL_NAME",
        help_heading = "Keystone"
    )]
    pub os_application_credential_name: Option<String>,

    /// Application credential secret; prefer the environment variable
    #[arg(
        long,
        value_name = "SECRET",
        env = "OS_APPLICATION_CREDENTIAL_SECRET",
        hide_env_values = true,
        help_heading = "Keystone"
    )]
    pub os_application_credential_secret: Option<String>,

    /// Catalog interface of the image endpoint: public, internal or admin
    #[arg(
        long,
        value_name = "INTERFACE",
        env = "OS_INTERFACE",
        default_value = "public",
        help_heading = "Keystone"
    )]
    pub os_interface: String,

    /// Region of the image endpoint
    #[arg(
        long,
        value_name = "REGION",
        env = "OS_REGION_NAME",
        help_heading = "Keystone"
    )]
    pub os_region_name: Option<String>,
}

/// The first of several environment variables that is set and not empty.
fn env_any(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

/// Whether an environment flag such as `OS_INSECURE` says yes.
fn env_true(name: &str) -> bool {
    std::env::var(name)
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

fn missing(reason: &str) -> Error {
    Error::InvalidOption {
        option: "--glance-endpoint",
        reason: reason.to_owned(),
    }
}

impl CloudArgs {
    /// Resolves the Glance target for `image_id`: endpoint and token from
    /// flags or environment; failing that, from Keystone when `OS_AUTH_URL`
    /// and credentials are given; no token at all for a no-auth Glance.
    pub fn resolve(&self, image_id: &str) -> Result<GlanceTarget> {
        let insecure = self.insecure || env_true("OS_INSECURE");
        let mut endpoint = self.glance_endpoint.clone().or_else(|| {
            env_any(&[
                "OS_IMAGE_ENDPOINT",
                "OS_IMAGE_URL",
                "OS_IMAGE_ENDPOINT_OVERRIDE",
            ])
        });
        let mut token = self
            .os_token
            .clone()
            .or_else(|| env_any(&["OS_TOKEN", "OS_AUTH_TOKEN"]))
            .map(Secret::new);

        let auth_url = self.os_auth_url.clone().filter(|u| !u.is_empty());
        if token.is_none() || endpoint.is_none() {
            if let Some(auth_url) = auth_url {
                let credentials = self.credentials().ok_or_else(|| {
                    missing(
                        "OS_AUTH_URL is set but no credentials are: set OS_USERNAME and OS_PASSWORD, \
                         or OS_APPLICATION_CREDENTIAL_ID and OS_APPLICATION_CREDENTIAL_SECRET, \
                         or give --os-token and --glance-endpoint",
                    )
                })?;
                let auth = KeystoneAuth {
                    auth_url,
                    credentials,
                    project: Named {
                        id: self
                            .os_project_id
                            .clone()
                            .or_else(|| env_any(&["OS_PROJECT_ID", "OS_TENANT_ID"])),
                        name: self
                            .os_project_name
                            .clone()
                            .or_else(|| env_any(&["OS_PROJECT_NAME", "OS_TENANT_NAME"])),
                        domain_id: self.os_project_domain_id.clone(),
                        domain_name: self.os_project_domain_name.clone(),
                    },
                    insecure,
                    ca_file: self.os_cacert.clone(),
                };
                tracing::info!(auth_url = %auth.auth_url, "Authenticating with Keystone");
                let session = keystone::authenticate(&auth)?;
                if endpoint.is_none() {
                    endpoint = Some(session.endpoint(
                        "image",
                        &self.os_interface,
                        self.os_region_name.as_deref(),
                    )?);
                }
                // A token given explicitly wins over the one just issued.
                token = token.or(Some(session.token));
            } else if endpoint.is_none() {
                let hint = if std::env::var_os("OS_CLOUD").is_some() {
                    "OS_CLOUD is set, but clouds.yaml is not read by this tool: export the OS_* variables \
                     (OS_AUTH_URL and credentials, or OS_TOKEN and OS_IMAGE_ENDPOINT) or give --glance-endpoint"
                } else {
                    "No image endpoint: give --glance-endpoint (or OS_IMAGE_ENDPOINT), or OS_AUTH_URL \
                     with credentials to find it in the Keystone catalog"
                };
                return Err(missing(hint));
            }
        }
        Ok(GlanceTarget {
            endpoint: endpoint.unwrap_or_default(),
            image_id: image_id.to_owned(),
            token,
            insecure,
            ca_file: self.os_cacert.clone(),
        })
    }

    /// Password or application credential, whichever is given.
    fn credentials(&self) -> Option<Credentials> {
        let user = Named {
            id: self.os_user_id.clone(),
            name: self.os_username.clone(),
            domain_id: self.os_user_domain_id.clone(),
            domain_name: self.os_user_domain_name.clone(),
        };
        if let Some(secret) = &self.os_application_credential_secret {
            return Some(Credentials::ApplicationCredential {
                id: self.os_application_credential_id.clone(),
                name: self.os_application_credential_name.clone(),
                user,
                secret: Secret::new(secret.clone()),
            });
        }
        let password = self.os_password.clone()?;
        Some(Credentials::Password {
            user,
            password: Secret::new(password),
        })
    }
}
