import pytest


@pytest.mark.django_db(transaction=True)
def test_it_reports_database_and_channel_layer(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "channel_layer": "ok"}
