"""Backup of a whole store to one file, restored into an empty store on the other backend."""

from __future__ import annotations

import shutil

import pytest

from edgeplane.admin.backup import backup, restore
from edgeplane.admin.store import Store, store_url

from admin_harness import in_process, sdk_on, store_for


@pytest.mark.parametrize("source, target", [("sqlite", "postgresql"), ("postgresql", "sqlite")])
def test_a_backup_restores_into_an_empty_store_of_the_other_backend(tmp_path, source, target):
    import trustme
    leaf = trustme.CA().issue_cert("web.example")
    key = leaf.private_key_pem.bytes().decode()
    source_url, drop_source = store_for(source, tmp_path)
    target_url, drop_target = store_for(target, tmp_path)
    try:
        service, client = in_process(source_url, tmp_path / "a")
        sdk = sdk_on(client)
        sdk.create("certificates", {"name": "web", "cert": leaf.cert_chain_pems[0].bytes().decode(), "key": key})
        sdk.create("applications", {"name": "home", "domains": ["home.example"],
                                    "rules": [{"actions": [{"respond": {"body": "hi"}}]}]})
        released = sdk.release(note="before backup")
        sdk.create_user("bob", "bob-password")
        document = backup(service.store)
        client.__exit__(None, None, None)
        service.close()

        (tmp_path / "b").mkdir()
        shutil.copy(tmp_path / "a" / "secret.key", tmp_path / "b" / "secret.key")  # the key goes with the backup
        empty = Store(store_url(target_url, tmp_path / "b"))
        counts = restore(empty, document)
        empty.close()
        assert counts["releases"] == 1 and counts["users"] == 2

        restored, client = in_process(target_url, tmp_path / "b")
        again = sdk_on(client)
        assert again.whoami()["name"] == "admin", "tokens survive"
        assert again.releases()[0]["note"] == "before backup"
        assert again.release_snapshot(released["version"])["config"]["applications"][0]["name"] == "home"
        with restored.store.reading() as connection:
            assert restored.draft.one(connection, "certificates", "web").instance.key == key
        assert again.release()["version"] == released["version"] + 1, "the counter came along"
        assert again.create_user("carol", "carol-password")  # id sequences moved past the rows
        client.__exit__(None, None, None)
        restored.close()
        with pytest.raises(ValueError, match="not empty"):
            restore(Store(store_url(target_url, tmp_path / "b")), document)
    finally:
        drop_source()
        drop_target()
