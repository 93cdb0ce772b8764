"""The few Glance image API calls the ``snapshot_disk`` step makes itself.

The engine uploads the data and checks Glance's digests; before that the step
checks that the image exists and is ``queued`` (a clear error beats a
conflict halfway through), and after it records the report as image
properties because Ironic discards what a step returns. The token travels
only in the ``X-Auth-Token`` header and is never logged.
"""

from __future__ import annotations

import re
from typing import Any

import requests

from ironic_snapshot.errors import ImageServiceError

#: Media type of Glance's JSON patch.
PATCH_MEDIA_TYPE = "application/openstack-images-v2.1-json-patch"


def normalise_endpoint(endpoint: str) -> str:
    """The endpoint without a trailing slash or ``/v2``.

    :param endpoint: such as ``http://glance:9292/v2/``.
    :returns: such as ``http://glance:9292``.
    """
    endpoint = endpoint.rstrip("/")
    if endpoint.endswith("/v2"):
        endpoint = endpoint[: -len("/v2")]
    return endpoint


class GlanceImages:
    """A minimal Glance v2 image client for one endpoint and credential.

    :param endpoint: the image service endpoint.
    :param token: Keystone token, or ``None`` for a no-auth Glance.
    :param verify: ``requests``' ``verify``: a CA bundle path or a bool.
    :param timeout: seconds to wait for each request.
    """

    def __init__(
        self, endpoint: str, token: str | None, verify: bool | str, timeout: float
    ) -> None:
        self.endpoint = normalise_endpoint(endpoint)
        self._token = token
        self._verify = verify
        self._timeout = timeout

    def __repr__(self) -> str:
        # Never show the token, even in a debugger or a traceback.
        return f"GlanceImages({self.endpoint!r})"

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._token:
            headers["X-Auth-Token"] = self._token
        headers.update(extra or {})
        return headers

    def _request(
        self, method: str, image_id: str, action: str, **kwargs: Any
    ) -> requests.Response:
        url = f"{self.endpoint}/v2/images/{image_id}"
        try:
            response = requests.request(
                method, url, timeout=self._timeout, verify=self._verify, **kwargs
            )
        except requests.RequestException as exc:
            # The exception text holds the URL only, never headers.
            raise ImageServiceError(
                f"Glance at {self.endpoint} could not be reached to {action} "
                f"(image {image_id}): {exc.__class__.__name__}: check the "
                "glance_endpoint argument or [snapshot]glance_endpoint and that "
                "the image service is up and reachable from the ramdisk"
            ) from exc
        if response.status_code == 404:
            raise ImageServiceError(
                f"Image {image_id} was not found in Glance at {self.endpoint}: "
                "create the image first (it must be queued) and pass its id "
                "as image_id, with a token of the image's project"
            )
        if response.status_code in (401, 403):
            raise ImageServiceError(
                f"Glance at {self.endpoint} refused to {action} (image "
                f"{image_id}, HTTP {response.status_code}): the auth_token is "
                "expired, or lacks access to the image: issue a new one"
            )
        if response.status_code >= 400:
            raise ImageServiceError(
                f"Glance at {self.endpoint} answered HTTP "
                f"{response.status_code} to {action} (image {image_id}): "
                f"{_glance_message(response)}"
            )
        return response

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
