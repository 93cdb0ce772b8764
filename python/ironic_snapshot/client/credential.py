"""The upload credential: a Keystone application credential good for one upload.

The step's ``auth_token`` is visible to whoever can read the node while the
step runs (Ironic shows ``service_step`` unmasked) and Ironic and the agent
log it. So it must be worth as little as possible: a token of an application
credential that

- has access rules allowing exactly ``GET /v2/images/{id}``,
  ``PUT /v2/images/{id}/file`` and ``PATCH /v2/images/{id}`` of service
  ``image`` for this one image (keystonemiddleware in Glance enforces them;
  with ``[keystone_authtoken] service_type = image`` set there);
- cannot create further credentials or trusts (``unrestricted`` false);
- expires when the snapshot's timeout does;
- is deleted when the snapshot ends, which invalidates its tokens at once in
  Keystone (Glance's keystonemiddleware may accept a token it validated
  before for up to its ``token_cache_time``).

The secret never leaves this module; the token goes only into the step's
arguments.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any
from urllib.parse import urlsplit

from keystoneauth1 import exceptions as ks_exc

from ironic_snapshot.client.errors import CredentialError

__all__ = [
    "NAME_PREFIX",
    "UploadCredential",
    "access_rules",
    "create_upload_credential",
    "delete_credentials_of_image",
    "delete_upload_credential",
]

#: Application credential names are this prefix plus the image id.
NAME_PREFIX = "ironic-snapshot-"


@dataclasses.dataclass(frozen=True)
class UploadCredential:
    """An upload credential and a token from it.

    :ivar id: the application credential id.
    :ivar user_id: the user who owns it (the caller).
    :ivar name: ``ironic-snapshot-<image id>``.
    :ivar expires_at: ISO 8601 expiry time (UTC).
    :ivar token: a Keystone token of the credential, for the step.
    """

    id: str
    user_id: str
    name: str
    expires_at: str
    token: str = dataclasses.field(repr=False)

    def __repr__(self) -> str:
        # The token must not show up in a traceback or a debugger.
        return f"UploadCredential(id={self.id!r}, name={self.name!r}, expires_at={self.expires_at!r})"


def access_rules(image_id: str, endpoint: str) -> list[dict[str, str]]:
    """The access rules of the upload of ``image_id`` through ``endpoint``.

    keystonemiddleware matches the request path as Glance sees it, which
    includes the endpoint's path prefix (``/image`` in DevStack).

    :param image_id: the Glance image id.
    :param endpoint: the unversioned Glance endpoint.
    :returns: rules for service ``image``.
    """
    prefix = urlsplit(endpoint).path.rstrip("/")
    base = f"{prefix}/v2/images/{image_id}"
    return [
        {"service": "image", "method": "GET", "path": base},
        {"service": "image", "method": "PATCH", "path": base},
        {"service": "image", "method": "PUT", "path": f"{base}/file"},
        # A failed digest check makes the step deactivate the wrong image.
        {"service": "image", "method": "POST", "path": f"{base}/actions/deactivate"},
    ]


def _identity(conn: Any, method: str, url: str, what: str, **kwargs: Any) -> Any:
    try:
        response = conn.identity.request(url, method, raise_exc=False, **kwargs)
    except ks_exc.ClientException as exc:
        raise CredentialError(f"Cannot {what}: Keystone could not be reached "
                              f"({exc.__class__.__name__})") from exc
    return response


def _message(response: Any) -> str:
    try:
        error = response.json().get("error") or {}
        return str(error.get("message") or response.status_code)
    except (ValueError, AttributeError):
        return f"HTTP {response.status_code}"


def create_upload_credential(conn: Any, image_id: str, *, endpoint: str,
                             expires_at: datetime.datetime) -> UploadCredential:
    """Creates the upload credential of ``image_id`` and gets a token from it.

    :param conn: the caller's ``openstack.connection.Connection`` (project-scoped).
    :param image_id: the queued image the step fills.
    :param endpoint: the Glance endpoint the step uploads to.
    :param expires_at: when the credential expires (timezone-aware).
    :returns: the credential with a token.
    :raises CredentialError: Keystone refused (for example a policy forbids
        application credentials) or could not be reached.
    """
    user_id = conn.current_user_id
    name = NAME_PREFIX + image_id
    expiry = expires_at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.000000")
    response = _identity(
        conn, "POST", f"/users/{user_id}/application_credentials",
        "create the upload credential",
        json={"application_credential": {
            "name": name,
            "description": f"ironic-snapshot: upload of image {image_id} only; "
                           "deleted when the snapshot ends",
            "expires_at": expiry,
            "unrestricted": False,
            "access_rules": access_rules(image_id, endpoint),
        }})
    if response.status_code != 201:
        raise CredentialError(
            f"Keystone refused to create the upload credential (HTTP "
            f"{response.status_code}: {_message(response)}): your cloud must allow users "
            "to create application credentials with access rules", image_id=image_id)
    body = response.json()["application_credential"]
    credential_id, secret = body["id"], body["secret"]
    token_response = _identity(
        conn, "POST", "/auth/tokens", "get a token of the upload credential",
        authenticated=False,
        json={"auth": {"identity": {"methods": ["application_credential"],
                                    "application_credential": {"id": credential_id,
                                                               "secret": secret}}}})
    token = token_response.headers.get("X-Subject-Token")
    if token_response.status_code != 201 or not token:
        delete_upload_credential(conn, UploadCredential(credential_id, user_id, name, expiry, ""))
        raise CredentialError(
            f"Keystone refused a token of the upload credential (HTTP "
            f"{token_response.status_code}: {_message(token_response)})", image_id=image_id)
    return UploadCredential(credential_id, user_id, name, expiry, token)


def delete_upload_credential(conn: Any, credential: UploadCredential) -> None:
    """Deletes the credential (its tokens stop validating); a missing one is fine.

    :raises CredentialError: Keystone refused or could not be reached.
    """
    response = _identity(conn, "DELETE",
                         f"/users/{credential.user_id}/application_credentials/{credential.id}",
                         "delete the upload credential")
    if response.status_code not in (204, 404):
        raise CredentialError(f"Keystone refused to delete the upload credential "
                              f"{credential.id} (HTTP {response.status_code}: "
                              f"{_message(response)})")


def delete_credentials_of_image(conn: Any, image_id: str) -> int:
    """Deletes the caller's upload credentials of ``image_id``; returns how many.

    :raises CredentialError: Keystone refused or could not be reached.
    """
    user_id = conn.current_user_id
    response = _identity(conn, "GET",
                         f"/users/{user_id}/application_credentials?name={NAME_PREFIX}{image_id}",
                         "list the upload credentials")
    if response.status_code != 200:
        raise CredentialError(f"Keystone refused to list application credentials (HTTP "
                              f"{response.status_code}: {_message(response)})")
    found = response.json().get("application_credentials", [])
    for item in found:
        delete_upload_credential(conn, UploadCredential(item["id"], user_id, item["name"],
                                                        item.get("expires_at") or "", ""))
    return len(found)
