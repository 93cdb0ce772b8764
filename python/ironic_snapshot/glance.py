"""The few Glance and Keystone API calls the ``snapshot_disk`` step makes itself.

The engine uploads the data and checks Glance's digests; before that the step
checks that the image exists and is ``queued`` (a clear error beats a
conflict halfway through), or creates it, and after it records the report as
image properties because Ironic discards what a step returns. The token
travels only in the ``X-Auth-Token`` header and is never logged.

When the step is given no token (a runbook cannot carry one), it gets one
from Keystone with the credential of the agent's configuration
(:class:`ConfiguredCredential`), with plain ``requests``: ironic-python-agent
ramdisks do not always ship keystoneauth1. The secret travels only in the
body of that one request and is never logged or put in an error.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import requests

from ironic_snapshot.errors import IdentityServiceError, ImageServiceError

#: Media type of Glance's JSON patch.
PATCH_MEDIA_TYPE = "application/openstack-images-v2.1-json-patch"


def _unversioned(url: str, version: str) -> str:
    # Catalogs and configs give service URLs with or without the API version
    # and a trailing slash; requests add the version themselves.
    url = url.rstrip("/")
    return url[: -len(version)] if url.endswith(version) else url


def normalise_endpoint(endpoint: str) -> str:
    """The endpoint without a trailing slash or ``/v2``.

    :param endpoint: such as ``http://glance:9292/v2/``.
    :returns: such as ``http://glance:9292``.
    """
    return _unversioned(endpoint, "/v2")


class GlanceImages:
    """A minimal Glance v2 image client for one endpoint and credential.

    :param endpoint: the image service endpoint.
    :param token: Keystone token, or ``None`` for a no-auth Glance.
    :param verify: ``requests``' ``verify``: a CA bundle path or a bool.
    :param timeout: seconds to wait for each request.
    :param refused_hint: what to do when Glance answers 401 or 403, which
        depends on where the token came from.
    """

    def __init__(
        self,
        endpoint: str,
        token: str | None,
        verify: bool | str,
        timeout: float,
        refused_hint: str | None = None,
    ) -> None:
        self.endpoint = normalise_endpoint(endpoint)
        self._token = token
        self._verify = verify
        self._timeout = timeout
        self._refused_hint = refused_hint or (
            "the auth_token is expired, or lacks access to the image: issue a new one"
        )

    def __repr__(self) -> str:
        # Never show the token, even in a debugger or a traceback.
        return f"GlanceImages({self.endpoint!r})"

    @property
    def token(self) -> str | None:
        """The token (for the engine's own requests; never log it)."""
        return self._token

    def with_token(self, token: str | None) -> GlanceImages:
        """The same client with another token (a renewed one)."""
        return GlanceImages(self.endpoint, token, self._verify, self._timeout,
                            self._refused_hint)

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._token:
            headers["X-Auth-Token"] = self._token
        headers.update(extra or {})
        return headers

    def _request(
        self, method: str, image_id: str | None, action: str, *, suffix: str = "",
        **kwargs: Any
    ) -> requests.Response:
        url = f"{self.endpoint}/v2/images"
        if image_id is not None:
            url += f"/{image_id}{suffix}"
        what = f" (image {image_id})" if image_id is not None else ""
        try:
            response = requests.request(
                method, url, timeout=self._timeout, verify=self._verify, **kwargs
            )
        except requests.RequestException as exc:
            # The exception text holds the URL only, never headers.
            raise ImageServiceError(
                f"Glance at {self.endpoint} could not be reached to {action}"
                f"{what}: {exc.__class__.__name__}: check the "
                "glance_endpoint argument or [snapshot]glance_endpoint and that "
                "the image service is up and reachable from the ramdisk"
            ) from exc
        if response.status_code == 404 and image_id is not None:
            raise ImageServiceError(
                f"Image {image_id} was not found in Glance at {self.endpoint}: "
                "create the image first (it must be queued) and pass its id "
                "as image_id, with a token of the image's project",
                status=404,
            )
        if response.status_code in (401, 403):
            raise ImageServiceError(
                f"Glance at {self.endpoint} refused to {action}{what}, HTTP "
                f"{response.status_code}: {self._refused_hint}",
                status=response.status_code,
            )
        if response.status_code >= 400:
            raise ImageServiceError(
                f"Glance at {self.endpoint} answered HTTP "
                f"{response.status_code} to {action}{what}: "
                f"{_glance_message(response)}",
                status=response.status_code,
            )
        return response

    def verify_upload(self, image_id: str, report: dict[str, Any], *, insecure: bool,
                      ca_file: str | None) -> None:
        """Checks that Glance holds exactly the image of ``report``, with this token.

        The engine's own check (``verify_glance``), made here rather than at
        the end of the capture so that it can use a newer token than the
        upload's.

        :param image_id: the image id.
        :param report: the capture's report.
        :param insecure: skip TLS verification.
        :param ca_file: extra CA bundle, or ``None``.
        :raises ironic_snapshot.VerificationError: Glance's size or a digest
            differs from the report.
        :raises ironic_snapshot.UploadError: Glance refused (``status`` set)
            or could not be reached.
        """
        from ironic_snapshot import _engine

        _engine.verify_glance(
            image_id, glance_endpoint=self.endpoint, token=self._token,
            image_size=int(report["image_size"]), md5=str(report["md5"]),
            sha256=str(report["sha256"]), sha512=str(report["sha512"]),
            insecure=insecure, ca_file=ca_file)

    def get(self, image_id: str) -> dict[str, Any]:
        """The image's record.

        :param image_id: the image id.
        :returns: Glance's JSON representation of the image.
        :raises ImageServiceError: unknown image, refused or unreachable.
        """
        record: dict[str, Any] = self._request(
            "GET", image_id, "read the image", headers=self._headers()
        ).json()
        return record

    def create(
        self,
        name: str,
        disk_format: str,
        visibility: str,
        properties: dict[str, str],
    ) -> dict[str, Any]:
        """Creates a queued image (container format ``bare``).

        :param name: the image name.
        :param disk_format: ``qcow2`` or ``raw``.
        :param visibility: ``private``, ``shared``, ``community`` or ``public``.
        :param properties: extra string properties.
        :returns: Glance's JSON representation of the new image.
        :raises ImageServiceError: Glance refused or could not be reached.
        """
        body: dict[str, Any] = dict(properties)
        body.update(
            name=name,
            disk_format=disk_format,
            container_format="bare",
            visibility=visibility,
        )
        record: dict[str, Any] = self._request(
            "POST",
            None,
            "create the image",
            headers=self._headers({"Content-Type": "application/json"}),
            json=body,
        ).json()
        return record

    def delete(self, image_id: str) -> None:
        """Deletes an image.

        :param image_id: the image id.
        :raises ImageServiceError: Glance refused or could not be reached.
        """
        self._request("DELETE", image_id, "delete the image", headers=self._headers())

    def deactivate(self, image_id: str) -> None:
        """Deactivates an image: its data can no longer be downloaded or booted
        (except by admins) but stays in Glance, for inspection.

        ``POST /v2/images/{id}/actions/deactivate``; Glance 33's default
        policy lets the image's project members do it (older releases: only
        admins).

        :param image_id: the image id.
        :raises ImageServiceError: Glance refused or could not be reached.
        """
        self._request("POST", image_id, "deactivate the image", suffix="/actions/deactivate",
                      headers=self._headers())

    def set_properties(self, image_id: str, properties: dict[str, str]) -> None:
        """Add or replace string properties of an image.

        :param image_id: the image id.
        :param properties: property names and string values.
        :raises ImageServiceError: Glance refused or could not be reached.
        """
        patch = [
            {"op": "add", "path": f"/{name}", "value": value}
            for name, value in sorted(properties.items())
        ]
        self._request(
            "PATCH",
            image_id,
            "record the snapshot report as image properties",
            headers=self._headers({"Content-Type": PATCH_MEDIA_TYPE}),
            json=patch,
        )


def _glance_message(response: requests.Response) -> str:
    """Glance's own message from an error response, shortened."""
    text = response.text.strip()
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error") or body
        if isinstance(error, dict) and error.get("message"):
            text = str(error["message"])
    text = " ".join(re.sub(r"<[^>]*>", " ", text).split())
    return text[:300] or "no message"


@dataclasses.dataclass(frozen=True)
class KeystoneAccess:
    """A token of the configured credential and the image endpoint of its catalog.

    :ivar token: the Keystone token (never shown by ``repr``).
    :ivar image_endpoint: the image service URL from the token's catalog for
        the configured interface and region, or ``None`` when it has none.
    """

    token: str = dataclasses.field(repr=False)
    image_endpoint: str | None


@dataclasses.dataclass(frozen=True)
class ConfiguredCredential:
    """The operator's credential from the agent configuration ``[snapshot]``.

    Either an application credential (id and secret) or a user's password
    scoped to a project. Built by :meth:`from_conf`, which checks that what
    is set is complete without doing any I/O.

    :ivar auth_url: the Keystone endpoint without ``/v3``.
    """

    auth_url: str
    application_credential_id: str | None = None
    application_credential_secret: str | None = dataclasses.field(default=None, repr=False)
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    user_domain_name: str = "Default"
    project_name: str | None = None
    project_domain_name: str = "Default"

    @classmethod
    def from_conf(cls, opts: Any) -> ConfiguredCredential | None:
        """The credential of ``CONF.snapshot``, or ``None`` when none is set.

        :param opts: the ``[snapshot]`` group of the agent configuration.
        :returns: the credential, or ``None`` when neither ``auth_url`` nor
            any credential option is set.
        :raises ValueError: the options set are incomplete or contradictory;
            the message names the options (never a secret's value).
        """
        names = ("application_credential_id", "application_credential_secret",
                 "username", "password", "project_name")
        given = {name for name in names if getattr(opts, name)}
        if not opts.auth_url:
            if given:
                raise ValueError(
                    f"[snapshot]{sorted(given)[0]} is set but [snapshot]auth_url is "
                    "not: set auth_url to the Keystone endpoint in the agent "
                    "configuration")
            return None
        auth_url = normalise_auth_url(opts.auth_url)
        if not auth_url.startswith(("http://", "https://")):
            raise ValueError(
                f"[snapshot]auth_url {opts.auth_url!r} is not an http:// or "
                "https:// URL: set it to the Keystone endpoint")
        if {"application_credential_id", "application_credential_secret"} & given:
            if not {"application_credential_id", "application_credential_secret"} <= given:
                missing = ({"application_credential_id", "application_credential_secret"}
                           - given).pop()
                raise ValueError(
                    f"[snapshot]{missing} is not set: an application credential "
                    "needs both application_credential_id and "
                    "application_credential_secret")
            if {"username", "password"} & given:
                raise ValueError(
                    "[snapshot] sets both an application credential and "
                    "username/password: keep only one (preferably the "
                    "application credential)")
            return cls(auth_url,
                       application_credential_id=opts.application_credential_id,
                       application_credential_secret=opts.application_credential_secret)
        if {"username", "password", "project_name"} <= given:
            return cls(auth_url, username=opts.username, password=opts.password,
                       user_domain_name=opts.user_domain_name or "Default",
                       project_name=opts.project_name,
                       project_domain_name=opts.project_domain_name or "Default")
        raise ValueError(
            "[snapshot]auth_url is set but no complete credential: set "
            "application_credential_id and application_credential_secret, or "
            "username, password and project_name")

    def describe(self) -> str:
        """Which credential this is, for messages: no secret in it."""
        if self.application_credential_id:
            return f"application credential {self.application_credential_id}"
        return (f"user {self.username} (domain {self.user_domain_name}) of project "
                f"{self.project_name} (domain {self.project_domain_name})")

    def _auth_body(self) -> dict[str, Any]:
        if self.application_credential_id:
            return {"auth": {"identity": {
                "methods": ["application_credential"],
                "application_credential": {"id": self.application_credential_id,
                                           "secret": self.application_credential_secret}}}}
        return {"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": self.username, "domain": {"name": self.user_domain_name},
                "password": self.password}}},
            "scope": {"project": {"name": self.project_name,
                                  "domain": {"name": self.project_domain_name}}}}}

    def authenticate(self, *, verify: bool | str, timeout: float, interface: str,
                     region: str | None) -> KeystoneAccess:
        """Gets a token (``POST /v3/auth/tokens``) and the image endpoint.

        :param verify: ``requests``' ``verify``: a CA bundle path or a bool.
        :param timeout: seconds to wait for Keystone.
        :param interface: catalog interface of the image endpoint.
        :param region: catalog region, or ``None`` for any.
        :returns: the token and the image endpoint of its catalog.
        :raises IdentityServiceError: Keystone refused the credential or could
            not be reached.
        """
        url = f"{self.auth_url}/v3/auth/tokens"
        try:
            response = requests.post(url, json=self._auth_body(), timeout=timeout,
                                     verify=verify,
                                     headers={"Accept": "application/json"})
        except requests.RequestException as exc:
            raise IdentityServiceError(
                f"Keystone at {self.auth_url} could not be reached to authenticate "
                f"{self.describe()}: {exc.__class__.__name__}: check "
                "[snapshot]auth_url and that Keystone is reachable from the ramdisk"
            ) from exc
        token = response.headers.get("X-Subject-Token")
        if response.status_code != 201 or not token:
            hint = ("check [snapshot]application_credential_id and "
                    "application_credential_secret, and that the credential has "
                    "not expired or been deleted" if self.application_credential_id
                    else "check [snapshot]username, password and project_name")
            raise IdentityServiceError(
                f"Keystone at {self.auth_url} refused the {self.describe()} of "
                f"[snapshot] in the agent configuration (HTTP "
                f"{response.status_code}: {_glance_message(response)}): {hint}")
        try:
            catalog = response.json()["token"].get("catalog") or []
        except (ValueError, KeyError, AttributeError):
            catalog = []
        return KeystoneAccess(token, find_endpoint(catalog, "image", interface, region))


def normalise_auth_url(auth_url: str) -> str:
    """The Keystone endpoint without a trailing slash or ``/v3``.

    :param auth_url: such as ``https://keystone:5000/v3/``.
    :returns: such as ``https://keystone:5000``.
    """
    return _unversioned(auth_url, "/v3")


def find_endpoint(catalog: list[dict[str, Any]], service_type: str, interface: str,
                  region: str | None) -> str | None:
    """The URL of a service in a Keystone v3 catalog.

    :param catalog: the ``catalog`` of a token.
    :param service_type: such as ``image``.
    :param interface: ``public``, ``internal`` or ``admin``.
    :param region: the region id, or ``None`` for the first one found.
    :returns: the URL, or ``None`` when the catalog has no such endpoint.
    """
    for service in catalog:
        if service.get("type") != service_type:
            continue
        for endpoint in service.get("endpoints") or []:
            if endpoint.get("interface") != interface:
                continue
            if region and region not in (endpoint.get("region_id"), endpoint.get("region")):
                continue
            url = endpoint.get("url")
            if url:
                return str(url)
    return None
