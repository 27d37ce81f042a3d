"""Assertions on API responses shared by the API tests."""
from __future__ import annotations


def answer(response, status: int):
    """The JSON body of a response that must have `status`; a 500 or a non-JSON body fails first."""
    assert response.status_code != 500, response.content
    assert response["Content-Type"].startswith("application/json"), (response["Content-Type"], response.content)
    body = response.json()
    assert response.status_code == status, body
    return body
