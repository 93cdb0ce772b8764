//! Where to upload and with which token: the settings of a Glance upload.
//!
//! Every setting is taken, in this order, from its flag, its `OS_*`
//! environment variable, or the `clouds.yaml` entry named by `--os-cloud`
//! (`OS_CLOUD`), merged with `secure.yaml`: the precedence openstackclient
//! gives them. When the token or the image endpoint is still missing,
//! Keystone v3 gives both (password, application credential or token
//! authentication, as `auth_type` says or the credentials given imply).
//!
//! One table ([`SETTINGS`]) names each setting's flag, environment variables
//! and `clouds.yaml` keys, so the command line, the environment and the file
//! cannot drift apart. The command line's parser (clap, in the CLI) builds
//! its flags from that table and hands their values over as [`Flags`];
//! [`resolve`] does the rest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use snapshot_core::{Error, Result, Secret};
use yaml_rust2::{Yaml, YamlLoader};

use crate::GlanceTarget;
use crate::keystone::{self, Credentials, KeystoneAuth, Named};

/// One setting: the flag, environment variables and `clouds.yaml` keys that
/// give the same value.
pub struct Setting {
    /// Long flag without the dashes; also its key in [`Flags`].
    pub flag: &'static str,
    /// Environment variables; the first one set (and not empty) counts.
    pub env: &'static [&'static str],
    /// Keys in the `clouds.yaml` entry (`auth.` for its `auth:` section);
    /// the first one present counts.
    pub cloud: &'static [&'static str],
    /// Placeholder in the help.
    pub value_name: &'static str,
    /// Help text (the environment variables are appended).
    pub help: &'static str,
    /// Section of the help.
    pub heading: &'static str,
    /// A switch (`--insecure`) rather than a flag with a value: given, its
    /// value in [`Flags`] is `true`.
    pub switch: bool,
}

const GLANCE: &str = "Glance upload";
const KEYSTONE: &str = "Keystone";

/// A flag with a value in the Keystone section of the help.
const fn keystone(
    flag: &'static str,
    env: &'static [&'static str],
    cloud: &'static [&'static str],
    value_name: &'static str,
    help: &'static str,
) -> Setting {
    Setting {
        flag,
        env,
        cloud,
        value_name,
        help,
        heading: KEYSTONE,
        switch: false,
    }
}

const IMAGE_ENDPOINT: &Setting = &Setting {
    flag: "glance-endpoint",
    env: &[
        "OS_IMAGE_ENDPOINT",
        "OS_IMAGE_URL",
        "OS_IMAGE_ENDPOINT_OVERRIDE",
    ],
    cloud: &["image_endpoint_override"],
    value_name: "URL",
    help: "Image service endpoint, with or without /v2; taken from the Keystone catalog when not given",
    heading: GLANCE,
    switch: false,
};
const TOKEN: &Setting = &Setting {
    flag: "os-token",
    env: &["OS_TOKEN", "OS_AUTH_TOKEN"],
    cloud: &["auth.token", "auth.auth_token"],
    value_name: "TOKEN",
    help: "Keystone token sent to Glance; prefer the environment: command lines are visible to every local user",
    heading: GLANCE,
    switch: false,
};
const INSECURE: &Setting = &Setting {
    flag: "insecure",
    env: &["OS_INSECURE"],
    // `verify: false` too, see `CloudEntry::settings`.
    cloud: &["insecure"],
    value_name: "",
    help: "Do not verify TLS certificates (test clouds only)",
    heading: GLANCE,
    switch: true,
};
const CACERT: &Setting = &Setting {
    flag: "os-cacert",
    env: &["OS_CACERT"],
    cloud: &["cacert"],
    value_name: "FILE",
    help: "CA bundle (PEM) to trust besides the built-in roots",
    heading: GLANCE,
    switch: false,
};
const CLOUD: &Setting = &keystone(
    "os-cloud",
    &["OS_CLOUD"],
    &[],
    "NAME",
    "Take what no flag or environment variable gives from this cloud of clouds.yaml (looked for in \
     OS_CLIENT_CONFIG_FILE, ./, ~/.config/openstack/, /etc/openstack/; secure.yaml merged)",
);
const AUTH_TYPE: &Setting = &keystone(
    "os-auth-type",
    &["OS_AUTH_TYPE"],
    &["auth_type", "auth_plugin"],
    "TYPE",
    "Keystone authentication: password, v3applicationcredential, token or none; by default \
     implied by the credentials given",
);
const AUTH_URL: &Setting = &keystone(
    "os-auth-url",
    &["OS_AUTH_URL"],
    &["auth.auth_url"],
    "URL",
    "Keystone v3 URL, used when the token or the image endpoint is missing",
);
const USERNAME: &Setting = &keystone(
    "os-username",
    &["OS_USERNAME"],
    &["auth.username"],
    "NAME",
    "User name (password authentication)",
);
const USER_ID: &Setting = &keystone(
    "os-user-id",
    &["OS_USER_ID"],
    &["auth.user_id"],
    "ID",
    "User id (password authentication)",
);
const PASSWORD: &Setting = &keystone(
    "os-password",
    &["OS_PASSWORD"],
    &["auth.password"],
    "PASSWORD",
    "Password; prefer the environment variable or secure.yaml",
);
const USER_DOMAIN_NAME: &Setting = &keystone(
    "os-user-domain-name",
    &["OS_USER_DOMAIN_NAME"],
    &["auth.user_domain_name", "auth.domain_name"],
    "NAME",
    "Domain name of the user (default domain when neither name nor id is given)",
);
const USER_DOMAIN_ID: &Setting = &keystone(
    "os-user-domain-id",
    &["OS_USER_DOMAIN_ID"],
    &["auth.user_domain_id", "auth.domain_id"],
    "ID",
    "Domain id of the user",
);
const PROJECT_NAME: &Setting = &keystone(
    "os-project-name",
    &["OS_PROJECT_NAME", "OS_TENANT_NAME"],
    &["auth.project_name", "auth.tenant_name"],
    "NAME",
    "Project to scope the token to",
);
const PROJECT_ID: &Setting = &keystone(
    "os-project-id",
    &["OS_PROJECT_ID", "OS_TENANT_ID"],
    &["auth.project_id", "auth.tenant_id"],
    "ID",
    "Project id to scope the token to",
);
const PROJECT_DOMAIN_NAME: &Setting = &keystone(
    "os-project-domain-name",
    &["OS_PROJECT_DOMAIN_NAME"],
    &["auth.project_domain_name", "auth.domain_name"],
    "NAME",
    "Domain name of the project",
);
const PROJECT_DOMAIN_ID: &Setting = &keystone(
    "os-project-domain-id",
    &["OS_PROJECT_DOMAIN_ID"],
    &["auth.project_domain_id", "auth.domain_id"],
    "ID",
    "Domain id of the project",
);
const APP_CRED_ID: &Setting = &keystone(
    "os-application-credential-id",
    &["OS_APPLICATION_CREDENTIAL_ID"],
    &["auth.application_credential_id"],
    "ID",
    "Application credential id (instead of a password)",
);
const APP_CRED_NAME: &Setting = &keystone(
    "os-application-credential-name",
    &["OS_APPLICATION_CREDENTIAL_NAME"],
    &["auth.application_credential_name"],
    "NAME",
    "Application credential name (with the user it belongs to)",
);
const APP_CRED_SECRET: &Setting = &keystone(
    "os-application-credential-secret",
    &["OS_APPLICATION_CREDENTIAL_SECRET"],
    &["auth.application_credential_secret"],
    "SECRET",
    "Application credential secret; prefer the environment variable or secure.yaml",
);
const INTERFACE: &Setting = &keystone(
    "os-interface",
    &["OS_INTERFACE"],
    &["image_interface", "interface", "endpoint_type"],
    "INTERFACE",
    "Catalog interface of the image endpoint: public (default), internal or admin",
);
const REGION: &Setting = &keystone(
    "os-region-name",
    &["OS_REGION_NAME"],
    &["region_name"],
    "REGION",
    "Region of the image endpoint",
);

/// Every setting, in the order of the help.
pub const SETTINGS: &[&Setting] = &[
    IMAGE_ENDPOINT,
    TOKEN,
    INSECURE,
    CACERT,
    CLOUD,
    AUTH_TYPE,
    AUTH_URL,
    USERNAME,
    USER_ID,
    PASSWORD,
    USER_DOMAIN_NAME,
    USER_DOMAIN_ID,
    PROJECT_NAME,
    PROJECT_ID,
    PROJECT_DOMAIN_NAME,
    PROJECT_DOMAIN_ID,
    APP_CRED_ID,
    APP_CRED_NAME,
    APP_CRED_SECRET,
    INTERFACE,
    REGION,
];

impl Setting {
    /// How a user gives this setting, for messages.
    fn hint(&self) -> String {
        let mut hint = format!("--{} or {}", self.flag, self.env[0]);
        if let Some(key) = self.cloud.first() {
            hint.push_str(&format!(" (clouds.yaml: {key})"));
        }
        hint
    }
}

/// The values of the table's flags given on the command line, by
/// [`Setting::flag`]. Environment variables are not read into it: [`resolve`]
/// reads them, so that the precedence is one piece of code (and a parser's
/// help never shows their values).
// No `Debug`: the flags may hold secrets.
#[derive(Default, Clone)]
pub struct Flags(BTreeMap<&'static str, String>);

impl Flags {
    /// Records the value given for `setting` on the command line; an empty
    /// value counts as not given.
    pub fn set(&mut self, setting: &'static Setting, value: String) {
        if !value.is_empty() {
            self.0.insert(setting.flag, value);
        }
    }

    /// The value given for the flag named `flag` (without the dashes).
    pub fn get(&self, flag: &str) -> Option<&str> {
        self.0.get(flag).map(String::as_str)
    }
}

/// Reads an environment variable; injectable so that tests need not change
/// the process environment.
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment.
fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Every setting given, with where it came from (for messages).
#[derive(Default)]
struct Settings(BTreeMap<&'static str, (String, String)>);

impl Settings {
    /// The value of `setting`, if given anywhere.
    fn get(&self, setting: &Setting) -> Option<&str> {
        self.0.get(setting.flag).map(|(value, _)| value.as_str())
    }

    /// Where the value of `setting` came from: a flag, a variable or a cloud.
    fn origin(&self, setting: &Setting) -> &str {
        self.0.get(setting.flag).map_or("", |(_, origin)| origin)
    }

    /// Sets `setting` unless a source of higher precedence set it already.
    fn fill(&mut self, setting: &'static Setting, value: String, origin: impl FnOnce() -> String) {
        if !value.is_empty() {
            self.0
                .entry(setting.flag)
                .or_insert_with(|| (value, origin()));
        }
    }

    fn owned(&self, setting: &Setting) -> Option<String> {
        self.get(setting).map(str::to_owned)
    }
}

/// Flags, then environment, then the named cloud of `clouds.yaml`.
fn gather(flags: &Flags, env: Env, search: &SearchPath) -> Result<Settings> {
    let mut settings = Settings::default();
    for &setting in SETTINGS {
        if let Some(value) = flags.0.get(setting.flag) {
            settings.fill(setting, value.clone(), || format!("--{}", setting.flag));
        }
        for name in setting.env {
            if let Some(value) = env(name) {
                settings.fill(setting, value, || (*name).to_owned());
            }
        }
    }
    if let Some(name) = settings.owned(CLOUD) {
        let entry = CloudEntry::load(&name, search)?;
        for (setting, value) in entry.settings(env) {
            settings.fill(setting, value, || {
                format!("cloud {name} of {}", entry.files.join(" + "))
            });
        }
    }
    Ok(settings)
}

/// Where `clouds.yaml` and `secure.yaml` are looked for: the override
/// variables' files first, then `clouds.{yaml,yml,json}` in each folder,
/// the first file found counting (as openstacksdk does).
#[derive(Debug, Clone, Default)]
struct SearchPath {
    /// `OS_CLIENT_CONFIG_FILE`.
    config_file: Option<PathBuf>,
    /// `OS_CLIENT_SECURE_FILE`.
    secure_file: Option<PathBuf>,
    /// Folders, in order.
    dirs: Vec<PathBuf>,
}

impl SearchPath {
    /// openstacksdk's order: the current folder, the user's
    /// (`$XDG_CONFIG_HOME` or `~/.config`) `openstack` folder, then
    /// `/etc/openstack`.
    fn standard(env: Env) -> Self {
        let mut dirs = vec![PathBuf::from(".")];
        if let Some(xdg) = env("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
            dirs.push(Path::new(&xdg).join("openstack"));
        }
        if let Some(home) = env("HOME").filter(|v| !v.is_empty()) {
            let dir = Path::new(&home).join(".config/openstack");
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        dirs.push(PathBuf::from("/etc/openstack"));
        let file = |name| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        SearchPath {
            config_file: file("OS_CLIENT_CONFIG_FILE"),
            secure_file: file("OS_CLIENT_SECURE_FILE"),
            dirs,
        }
    }

    /// The candidates for `stem` (`clouds` or `secure`), in order.
    fn candidates(&self, first: Option<&PathBuf>, stem: &str) -> Vec<PathBuf> {
        first
            .cloned()
            .into_iter()
            .chain(self.dirs.iter().flat_map(|dir| {
                ["yaml", "yml", "json"].map(|ext| dir.join(format!("{stem}.{ext}")))
            }))
            .collect()
    }

    /// Where a `clouds.yaml` was looked for, for messages.
    fn describe(&self) -> String {
        let mut places: Vec<String> = self
            .config_file
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        places.extend(
            self.dirs
                .iter()
                .map(|d| format!("{}/clouds.{{yaml,yml,json}}", d.display())),
        );
        places.join(", ")
    }
}

fn cloud_error(reason: String) -> Error {
    Error::InvalidOption {
        option: "--os-cloud",
        reason,
    }
}

/// The first of `candidates` that exists, parsed; `None` when none does.
fn load_first(candidates: &[PathBuf]) -> Result<Option<(String, Yaml)>> {
    for path in candidates {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => {
                return Err(cloud_error(format!(
                    "Cannot read {shown} ({err}): make it readable, or point OS_CLIENT_CONFIG_FILE at another clouds.yaml"
                )));
            }
        };
        let doc = YamlLoader::load_from_str(&text)
            .map_err(|err| {
                // The scanner's message names the construct, never the
                // text, so no secret of the file can leak through it.
                let at = err.marker();
                cloud_error(format!(
                    "{shown} is not valid YAML: {} at line {} column {}: fix the file",
                    err.info(),
                    at.line(),
                    at.col() + 1
                ))
            })?
            .into_iter()
            .next()
            .unwrap_or(Yaml::Null);
        if doc.as_hash().is_none() {
            return Err(cloud_error(format!(
                "{shown} holds no mapping (a clouds: section is expected): fix the file"
            )));
        }
        return Ok(Some((shown, doc)));
    }
    Ok(None)
}

/// `new` over `old`, mappings merged key by key (openstacksdk's
/// `merge_clouds`): how `secure.yaml` adds its secrets to `clouds.yaml`.
fn merge(old: &mut Yaml, new: Yaml) {
    match (old, new) {
        (Yaml::Hash(old), Yaml::Hash(new)) => {
            for (key, value) in new {
                match old.get_mut(&key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        old.insert(key, value);
                    }
                }
            }
        }
        (old, new) => *old = new,
    }
}

/// A scalar as text (numbers and booleans too: `project_id: 1234`).
fn scalar(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// One cloud of `clouds.yaml` merged with `secure.yaml`.
struct CloudEntry {
    entry: Yaml,
    /// The files it came from.
    files: Vec<String>,
}

impl CloudEntry {
    /// Finds cloud `name`.
    fn load(name: &str, search: &SearchPath) -> Result<Self> {
        let config = load_first(&search.candidates(search.config_file.as_ref(), "clouds"))?;
        let secure = load_first(&search.candidates(search.secure_file.as_ref(), "secure"))?;
        let mut files = Vec::new();
        let mut doc = Yaml::Hash(Default::default());
        for (file, part) in config.into_iter().chain(secure) {
            files.push(file);
            merge(&mut doc, part);
        }
        if files.is_empty() {
            return Err(cloud_error(format!(
                "No clouds.yaml found for cloud {name} (looked for {}): create one, or set OS_CLIENT_CONFIG_FILE to its path",
                search.describe()
            )));
        }
        let clouds = doc["clouds"].as_hash().cloned().unwrap_or_default();
        let entry = clouds
            .iter()
            .find(|(key, _)| scalar(key).as_deref() == Some(name))
            .map(|(_, entry)| entry.clone());
        let Some(entry) = entry else {
            let names: Vec<String> = clouds.keys().filter_map(scalar).collect();
            let names = if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            };
            return Err(cloud_error(format!(
                "Cloud {name} is not in {} (clouds found: {names}): give one of these to --os-cloud or OS_CLOUD",
                files.join(" + ")
            )));
        };
        if let Some(profile) = scalar(&entry["profile"]) {
            tracing::warn!(
                cloud = name,
                profile,
                "Vendor profiles (clouds-public.yaml) are not read: put auth_url and region_name in the cloud's own entry"
            );
        }
        Ok(CloudEntry { entry, files })
    }

    /// The value of a dotted key (`auth.username`).
    fn value(&self, key: &str) -> Option<String> {
        let node = key.split('.').fold(&self.entry, |node, part| &node[part]);
        scalar(node).filter(|v| !v.is_empty())
    }

    /// Every setting the entry gives.
    fn settings(&self, env: Env) -> Vec<(&'static Setting, String)> {
        let mut out = Vec::new();
        for &setting in SETTINGS {
            if let Some(value) = setting.cloud.iter().find_map(|key| self.value(key)) {
                out.push((setting, value));
            }
        }
        // `verify: false` is how most clouds.yaml files say `insecure`.
        if self.value("insecure").is_none()
            && let Some(verify) = self.value("verify")
        {
            out.push((INSECURE, (!truthy(&verify)).to_string()));
        }
        // The file is not expanded by a shell: `cacert: ~/ca.pem` is common.
        for (setting, value) in &mut out {
            if setting.flag == CACERT.flag
                && let (Some(rest), Some(home)) = (value.strip_prefix("~/"), env("HOME"))
            {
                *value = Path::new(&home).join(rest).display().to_string();
            }
        }
        out
    }
}

/// Whether a flag value such as `OS_INSECURE` or `verify` says yes.
fn truthy(value: &str) -> bool {
    matches!(
        value.to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

/// How to authenticate with Keystone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthType {
    Password,
    ApplicationCredential,
    Token,
    /// No Keystone: the image endpoint must be given, no token is sent.
    None,
}

impl AuthType {
    /// The keystoneauth plugin names this client implements.
    fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "password" | "v3password" => AuthType::Password,
            "v3applicationcredential" => AuthType::ApplicationCredential,
            "token" | "v3token" => AuthType::Token,
            "none" | "noauth" => AuthType::None,
            _ => return None,
        })
    }
}

/// What [`CloudArgs::resolve`] will do, decided before any request.
struct Plan {
    /// The image endpoint, when given.
    endpoint: Option<String>,
    /// The token, when given (and sent as it is).
    token: Option<Secret>,
    /// Keystone authentication for the missing token or endpoint.
    keystone: Option<KeystoneAuth>,
    /// Catalog interface of the image endpoint.
    interface: String,
    /// Catalog region of the image endpoint.
    region: Option<String>,
    insecure: bool,
    ca_file: Option<PathBuf>,
}

fn missing(reason: String) -> Error {
    Error::InvalidOption {
        option: "--glance-endpoint",
        reason,
    }
}

/// Turns the settings into a [`Plan`]: checks the auth type and that the
/// credentials it needs are there.
fn plan(s: &Settings) -> Result<Plan> {
    let insecure = s.get(INSECURE).is_some_and(truthy);
    let ca_file = s.get(CACERT).map(PathBuf::from);
    // An unknown type matters only once Keystone has to be asked: with a
    // token and an endpoint given it is not.
    let auth_type = s
        .get(AUTH_TYPE)
        .map(|name| AuthType::parse(name).ok_or(name));
    let no_auth = auth_type == Some(Ok(AuthType::None));
    let endpoint = s.owned(IMAGE_ENDPOINT);
    // No Keystone, no token: for a Glance without authentication.
    let token = if no_auth {
        None
    } else {
        s.owned(TOKEN).map(Secret::new)
    };
    let mut keystone = None;
    if !no_auth && (token.is_none() || endpoint.is_none()) {
        if let Some(auth_url) = s.owned(AUTH_URL) {
            let auth_type = auth_type.transpose().map_err(|name| Error::InvalidOption {
                option: "--os-auth-type",
                reason: format!(
                    "Unsupported auth type {name} (from {}): use password, v3applicationcredential, token \
                     or none, or give --os-token and --glance-endpoint",
                    s.origin(AUTH_TYPE)
                ),
            })?;
            keystone = Some(KeystoneAuth {
                auth_url,
                credentials: credentials(s, auth_type)?,
                project: Named {
                    id: s.owned(PROJECT_ID),
                    name: s.owned(PROJECT_NAME),
                    domain_id: s.owned(PROJECT_DOMAIN_ID),
                    domain_name: s.owned(PROJECT_DOMAIN_NAME),
                },
                insecure,
                ca_file: ca_file.clone(),
            });
        }
    }
    if endpoint.is_none() && keystone.is_none() {
        let cloud = s.get(CLOUD);
        return Err(missing(match (no_auth, cloud) {
            (true, _) => format!(
                "Auth type none needs the image endpoint: give {}",
                IMAGE_ENDPOINT.hint()
            ),
            (_, Some(cloud)) => format!(
                "Cloud {cloud} gives neither auth.auth_url nor image_endpoint_override: add one of them, \
                 or give --glance-endpoint (or OS_IMAGE_ENDPOINT)"
            ),
            _ => {
                "No image endpoint: give --glance-endpoint (or OS_IMAGE_ENDPOINT), or OS_AUTH_URL \
                  with credentials to find it in the Keystone catalog, or --os-cloud"
                    .to_owned()
            }
        }));
    }
    Ok(Plan {
        endpoint,
        token,
        keystone,
        interface: s.owned(INTERFACE).unwrap_or_else(|| "public".to_owned()),
        region: s.owned(REGION),
        insecure,
        ca_file,
    })
}

/// The credentials `auth_type` asks for, or (without one) whichever are
/// given: application credential, then password, then token.
fn credentials(s: &Settings, auth_type: Option<AuthType>) -> Result<Credentials> {
    let kind = match auth_type {
        Some(kind) => kind,
        None if s.get(APP_CRED_SECRET).is_some() => AuthType::ApplicationCredential,
        None if s.get(PASSWORD).is_some() => AuthType::Password,
        None if s.get(TOKEN).is_some() => AuthType::Token,
        None => {
            return Err(missing(format!(
                "An auth URL is set (from {}) but no credentials are: set OS_USERNAME and OS_PASSWORD, \
                 or OS_APPLICATION_CREDENTIAL_ID and OS_APPLICATION_CREDENTIAL_SECRET (or their clouds.yaml keys), \
                 or give --os-token and --glance-endpoint",
                s.origin(AUTH_URL)
            )));
        }
    };
    let user = Named {
        id: s.owned(USER_ID),
        name: s.owned(USERNAME),
        domain_id: s.owned(USER_DOMAIN_ID),
        domain_name: s.owned(USER_DOMAIN_NAME),
    };
    let secret = |setting: &Setting, what: &str| {
        s.owned(setting)
            .map(Secret::new)
            .ok_or_else(|| missing(format!("{what}: give {}", setting.hint())))
    };
    if kind == AuthType::Password && user.is_empty() {
        return Err(missing(format!(
            "Password authentication needs a user: give {}, or {}",
            USERNAME.hint(),
            USER_ID.hint()
        )));
    }
    Ok(match kind {
        AuthType::Password => Credentials::Password {
            user,
            password: secret(PASSWORD, "Password authentication needs a password")?,
        },
        AuthType::ApplicationCredential => Credentials::ApplicationCredential {
            id: s.owned(APP_CRED_ID),
            name: s.owned(APP_CRED_NAME),
            user,
            secret: secret(
                APP_CRED_SECRET,
                "Application credential authentication needs the secret",
            )?,
        },
        AuthType::Token => Credentials::Token {
            token: secret(TOKEN, "Token authentication needs a token")?,
        },
        AuthType::None => unreachable!("no Keystone authentication for auth type none"),
    })
}

/// Resolves the Glance target for `image_id`: endpoint and token from
/// `flags`, the environment or `clouds.yaml`; the missing ones from Keystone
/// when an auth URL and credentials are given; no token at all for a no-auth
/// Glance.
///
/// Errors: [`Error::InvalidOption`] naming the setting that is missing or
/// wrong (a `clouds.yaml` that cannot be read, an unknown cloud or auth
/// type, credentials that do not fit), and Keystone's errors
/// ([`keystone::authenticate`]).
pub fn resolve(flags: &Flags, image_id: &str) -> Result<GlanceTarget> {
    let settings = gather(flags, &process_env, &SearchPath::standard(&process_env))?;
    let plan = plan(&settings)?;
    let mut endpoint = plan.endpoint;
    let mut token = plan.token;
    if let Some(auth) = &plan.keystone {
        tracing::info!(auth_url = %auth.auth_url, "Authenticating with Keystone");
        let session = keystone::authenticate(auth)?;
        if endpoint.is_none() {
            endpoint = Some(session.endpoint("image", &plan.interface, plan.region.as_deref())?);
        }
        token = match auth.credentials {
            // The new token is scoped to the project; the old one may not be.
            Credentials::Token { .. } => Some(session.token),
            // A token given explicitly wins over the one just issued.
            _ => token.or(Some(session.token)),
        };
    }
    Ok(GlanceTarget {
        endpoint: endpoint.unwrap_or_default(),
        image_id: image_id.to_owned(),
        token,
        insecure: plan.insecure,
        ca_file: plan.ca_file,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::fs;

    use super::*;

    /// Temporary folders standing for ./, ~/.config/openstack and
    /// /etc/openstack, so that no test reads the user's own files.
    struct Place {
        _tmp: tempfile::TempDir,
        dirs: Vec<PathBuf>,
    }

    impl Place {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let dirs = ["cwd", "home", "etc"].map(|d| tmp.path().join(d));
            for dir in &dirs {
                fs::create_dir(dir).unwrap();
            }
            Place {
                _tmp: tmp,
                dirs: dirs.to_vec(),
            }
        }

        /// Writes `name` into folder `dir` (0: cwd, 1: home, 2: etc).
        fn write(&self, dir: usize, name: &str, text: &str) -> PathBuf {
            let path = self.dirs[dir].join(name);
            fs::write(&path, text).unwrap();
            path
        }

        fn search(&self) -> SearchPath {
            SearchPath {
                dirs: self.dirs.clone(),
                ..SearchPath::default()
            }
        }
    }

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name: &str| map.get(name).cloned()
    }

    fn flags(pairs: &[(&'static str, &str)]) -> Flags {
        Flags(pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect())
    }

    fn cloud(name: &str, auth_url: &str) -> String {
        format!(
            "clouds:\n  {name}:\n    auth:\n      auth_url: {auth_url}\n      username: carol\n    region_name: R1\n"
        )
    }

    fn gather_with(flags: &Flags, vars: &[(&str, &str)], search: &SearchPath) -> Result<Settings> {
        gather(flags, &env_of(vars), search)
    }

    /// The message of the error `gather_with` must fail with.
    fn gather_err(flags: &Flags, vars: &[(&str, &str)], search: &SearchPath) -> String {
        match gather_with(flags, vars, search) {
            Ok(_) => panic!("gathering succeeded where it must fail"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn first_clouds_file_in_search_order_wins() {
        let place = Place::new();
        place.write(1, "clouds.yaml", &cloud("lab", "http://home/v3"));
        place.write(2, "clouds.yaml", &cloud("lab", "http://etc/v3"));
        let env = [("OS_CLOUD", "lab")];
        let s = gather_with(&Flags::default(), &env, &place.search()).unwrap();
        assert_eq!(s.get(AUTH_URL), Some("http://home/v3"));
        assert!(
            s.origin(AUTH_URL).contains("home/clouds.yaml"),
            "{}",
            s.origin(AUTH_URL)
        );

        // ./clouds.yml comes before ~/.config/openstack/clouds.yaml ...
        place.write(0, "clouds.yml", &cloud("lab", "http://cwd/v3"));
        let s = gather_with(&Flags::default(), &env, &place.search()).unwrap();
        assert_eq!(s.get(AUTH_URL), Some("http://cwd/v3"));

        // ... and OS_CLIENT_CONFIG_FILE before everything.
        let other = place.write(2, "other.yaml", &cloud("lab", "http://override/v3"));
        let search = SearchPath {
            config_file: Some(other),
            ..place.search()
        };
        let s = gather_with(&Flags::default(), &env, &search).unwrap();
        assert_eq!(s.get(AUTH_URL), Some("http://override/v3"));

        // The first file found is the only one read: a cloud only in a
        // later file is not found (as openstacksdk does).
        let env = [("OS_CLOUD", "elsewhere")];
        place.write(2, "clouds.json", &cloud("elsewhere", "http://x/v3"));
        let err = gather_err(&Flags::default(), &env, &search);
        assert!(err.contains("Cloud elsewhere is not in"), "{err}");
        assert!(err.contains("clouds found: lab"), "{err}");
        assert!(err.contains("other.yaml"), "{err}");
    }

    #[test]
    fn standard_search_path() {
        let env = env_of(&[("HOME", "/h"), ("OS_CLIENT_CONFIG_FILE", "/c.yaml")]);
        let search = SearchPath::standard(&env);
        assert_eq!(search.config_file, Some(PathBuf::from("/c.yaml")));
        assert_eq!(search.secure_file, None);
        let dirs: Vec<_> = search
            .dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        assert_eq!(dirs, [".", "/h/.config/openstack", "/etc/openstack"]);
        let env = env_of(&[("HOME", "/h"), ("XDG_CONFIG_HOME", "/x")]);
        let dirs = SearchPath::standard(&env).dirs;
        assert_eq!(dirs[1], Path::new("/x/openstack"));
        assert_eq!(dirs.len(), 4);
        let candidates = search.candidates(search.config_file.as_ref(), "clouds");
        assert_eq!(candidates[0], Path::new("/c.yaml"));
        assert_eq!(candidates[1], Path::new("./clouds.yaml"));
        assert_eq!(candidates[2], Path::new("./clouds.yml"));
        assert_eq!(candidates[3], Path::new("./clouds.json"));
        assert_eq!(candidates.len(), 10);
        // No HOME (a minimal ramdisk): the home folder is simply not searched.
        assert_eq!(SearchPath::standard(&env_of(&[])).dirs.len(), 2);
    }

    #[test]
    fn secure_yaml_is_merged_into_the_entry() {
        let place = Place::new();
        place.write(1, "clouds.yaml", &cloud("lab", "http://home/v3"));
        // secure.yaml is looked for on its own: here in another folder.
        place.write(
            2,
            "secure.yaml",
            "clouds:\n  lab:\n    auth:\n      password: pw-s3cr3t\n    region_name: R2\n",
        );
        let s = gather_with(&Flags::default(), &[("OS_CLOUD", "lab")], &place.search()).unwrap();
        assert_eq!(s.get(PASSWORD), Some("pw-s3cr3t"));
        assert_eq!(s.get(USERNAME), Some("carol"), "clouds.yaml keys kept");
        assert_eq!(s.get(AUTH_URL), Some("http://home/v3"));
        assert_eq!(
            s.get(REGION),
            Some("R2"),
            "secure.yaml wins over clouds.yaml"
        );
        assert!(
            s.origin(PASSWORD).contains("secure.yaml"),
            "{}",
            s.origin(PASSWORD)
        );

        // OS_CLIENT_SECURE_FILE comes first.
        let other = place.write(0, "s.yaml", "clouds: {lab: {auth: {password: other}}}");
        let search = SearchPath {
            secure_file: Some(other),
            ..place.search()
        };
        let s = gather_with(&Flags::default(), &[("OS_CLOUD", "lab")], &search).unwrap();
        assert_eq!(s.get(PASSWORD), Some("other"));
        assert_eq!(s.get(REGION), Some("R1"));
    }

    #[test]
    fn flags_win_over_environment_over_clouds_yaml() {
        let place = Place::new();
        place.write(
            1,
            "clouds.yaml",
            "clouds:\n  lab:\n    auth_type: v3applicationcredential\n    auth:\n      auth_url: http://file/v3\n      username: file-user\n      project_name: file-project\n      domain_name: Dom\n      application_credential_id: ac\n      application_credential_secret: s\n    interface: internal\n    verify: false\n    cacert: ~/ca.pem\n",
        );
        let env = [
            ("OS_CLOUD", "lab"),
            ("OS_USERNAME", "env-user"),
            ("OS_AUTH_URL", "http://env/v3"),
            ("OS_TENANT_NAME", "env-tenant"),
            ("OS_USER_DOMAIN_NAME", ""),
            ("HOME", "/home/u"),
        ];
        let given = flags(&[("os-auth-url", "http://flag/v3")]);
        let s = gather_with(&given, &env, &place.search()).unwrap();
        assert_eq!(s.get(AUTH_URL), Some("http://flag/v3"));
        assert_eq!(s.origin(AUTH_URL), "--os-auth-url");
        assert_eq!(s.get(USERNAME), Some("env-user"));
        assert_eq!(s.origin(USERNAME), "OS_USERNAME");
        assert_eq!(
            s.get(PROJECT_NAME),
            Some("env-tenant"),
            "OS_TENANT_NAME alias"
        );
        // An empty variable counts as unset; domain_name fills both domains.
        assert_eq!(s.get(USER_DOMAIN_NAME), Some("Dom"));
        assert_eq!(s.get(PROJECT_DOMAIN_NAME), Some("Dom"));
        assert_eq!(s.get(INTERFACE), Some("internal"));
        assert_eq!(s.get(INSECURE), Some("true"), "verify: false");
        assert_eq!(s.get(CACERT), Some("/home/u/ca.pem"));
        assert_eq!(s.get(AUTH_TYPE), Some("v3applicationcredential"));

        // The flag also names the cloud, over OS_CLOUD.
        let given = flags(&[("os-cloud", "nowhere")]);
        let err = gather_err(&given, &env, &place.search());
        assert!(err.contains("Cloud nowhere is not in"), "{err}");

        // Without a cloud named, no file is read at all.
        let s = gather_with(&Flags::default(), &[("OS_USERNAME", "u")], &place.search()).unwrap();
        assert_eq!(s.get(AUTH_URL), None);
        assert_eq!(s.get(USERNAME), Some("u"));
    }

    #[test]
    fn plan_follows_the_auth_type() {
        let place = Place::new();
        place.write(
            0,
            "clouds.yaml",
            "clouds:\n  tok:\n    auth_type: token\n    auth:\n      auth_url: http://k/v3\n      token: t0k\n      project_id: 1234\n    region_name: R1\n  direct:\n    auth_type: token\n    auth: {token: t0k}\n    image_endpoint_override: http://glance:9292\n  open:\n    auth_type: none\n    image_endpoint_override: http://glance:9292\n  pw:\n    auth:\n      auth_url: http://k/v3\n      username: carol\n      password: pw\n      user_domain_id: d1\n  bad:\n    auth_type: v3oidcpassword\n    auth: {auth_url: http://k/v3}\n  empty:\n    region_name: R1\n",
        );
        let plan_of = |cloud: &str, vars: &[(&str, &str)]| {
            let mut env = vec![("OS_CLOUD", cloud)];
            env.extend_from_slice(vars);
            gather_with(&Flags::default(), &env, &place.search()).and_then(|s| plan(&s))
        };

        let p = plan_of("tok", &[]).unwrap();
        let auth = p.keystone.expect("token and no endpoint: Keystone");
        assert!(
            matches!(&auth.credentials, Credentials::Token { token } if token.expose() == "t0k")
        );
        assert_eq!(
            auth.project.id.as_deref(),
            Some("1234"),
            "a number is read as text"
        );
        assert_eq!(p.region.as_deref(), Some("R1"));
        assert_eq!(p.interface, "public");

        let p = plan_of("direct", &[]).unwrap();
        assert!(p.keystone.is_none(), "token and endpoint: no Keystone");
        assert_eq!(p.token.unwrap().expose(), "t0k");
        assert_eq!(p.endpoint.as_deref(), Some("http://glance:9292"));

        let p = plan_of("open", &[("OS_TOKEN", "ignored")]).unwrap();
        assert!(p.keystone.is_none() && p.token.is_none());

        let p = plan_of("pw", &[]).unwrap();
        let auth = p.keystone.unwrap();
        let Credentials::Password { user, password } = &auth.credentials else {
            panic!("password implied by the credentials given");
        };
        assert_eq!(password.expose(), "pw");
        assert_eq!(user.domain_id.as_deref(), Some("d1"));
        // OS_AUTH_TYPE over the file's credentials: asks for what is missing.
        let err = plan_of("pw", &[("OS_AUTH_TYPE", "v3applicationcredential")])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("OS_APPLICATION_CREDENTIAL_SECRET"), "{err}");

        let err = plan_of("bad", &[]).err().unwrap().to_string();
        assert!(
            err.contains("Unsupported auth type v3oidcpassword"),
            "{err}"
        );
        assert!(err.contains("cloud bad of"), "{err}");
        assert_eq!(err.lines().count(), 1);
        // As the message says: a token and an endpoint need no Keystone.
        let p = plan_of(
            "bad",
            &[("OS_TOKEN", "t"), ("OS_IMAGE_ENDPOINT", "http://g")],
        )
        .unwrap();
        assert!(p.keystone.is_none() && p.token.is_some());

        let err = plan_of("empty", &[]).err().unwrap().to_string();
        assert!(
            err.contains("Cloud empty gives neither auth.auth_url"),
            "{err}"
        );
        assert!(err.contains("--glance-endpoint"), "{err}");
    }

    #[test]
    fn file_errors_name_the_file_and_never_a_secret() {
        let place = Place::new();
        let path = place.write(
            1,
            "clouds.yaml",
            "clouds:\n  lab:\n    auth:\n      password: pw-s3cr3t\n     username: [broken\n",
        );
        let err = gather_err(&Flags::default(), &[("OS_CLOUD", "lab")], &place.search());
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("line 5"), "{err}");
        assert!(!err.contains("pw-s3cr3t"), "{err}");
        assert_eq!(err.lines().count(), 1);

        place.write(1, "clouds.yaml", "- just\n- a list\n");
        let err = gather_err(&Flags::default(), &[("OS_CLOUD", "lab")], &place.search());
        assert!(err.contains("holds no mapping"), "{err}");

        fs::remove_file(place.dirs[1].join("clouds.yaml")).unwrap();
        let err = gather_err(&Flags::default(), &[("OS_CLOUD", "lab")], &place.search());
        assert!(
            err.starts_with("Invalid option --os-cloud: No clouds.yaml found for cloud lab"),
            "{err}"
        );
        assert!(err.contains("etc/clouds.{yaml,yml,json}"), "{err}");

        // A folder where a file should be: unreadable, said with its path.
        fs::create_dir(place.dirs[0].join("clouds.yaml")).unwrap();
        let err = gather_err(&Flags::default(), &[("OS_CLOUD", "lab")], &place.search());
        assert!(
            err.contains("Cannot read") && err.contains("cwd/clouds.yaml"),
            "{err}"
        );
    }

    #[test]
    fn missing_credentials_say_what_to_set() {
        let s = gather_with(
            &Flags::default(),
            &[("OS_AUTH_URL", "http://k/v3")],
            &SearchPath::default(),
        )
        .unwrap();
        let err = plan(&s).err().unwrap().to_string();
        assert!(
            err.contains("from OS_AUTH_URL") && err.contains("OS_PASSWORD"),
            "{err}"
        );
        let s = gather_with(
            &flags(&[
                ("os-auth-type", "password"),
                ("os-auth-url", "http://k/v3"),
                ("os-username", "u"),
            ]),
            &[],
            &SearchPath::default(),
        )
        .unwrap();
        let err = plan(&s).err().unwrap().to_string();
        assert!(
            err.contains(
                "needs a password: give --os-password or OS_PASSWORD (clouds.yaml: auth.password)"
            ),
            "{err}"
        );
        let s = gather_with(
            &flags(&[("os-password", "pw-s3cr3t"), ("os-auth-url", "http://k/v3")]),
            &[],
            &SearchPath::default(),
        )
        .unwrap();
        let err = plan(&s).err().unwrap().to_string();
        assert!(err.contains("needs a user: give --os-username or OS_USERNAME (clouds.yaml: auth.username), or --os-user-id"), "{err}");
        assert!(!err.contains("pw-s3cr3t"), "{err}");
        let s = gather_with(&Flags::default(), &[], &SearchPath::default()).unwrap();
        let err = plan(&s).err().unwrap().to_string();
        assert!(
            err.contains("No image endpoint: give --glance-endpoint"),
            "{err}"
        );
    }
}
