"""The token streams as training reads them: built once, even when several processes ask at the same time."""

import threading
import time

from circuitlab import corpus


def test_streams_asked_for_at_once_are_built_once(tmp_path, monkeypatch):
    builds = []

    def build(tokenizer_path):
        builds.append(tokenizer_path)
        time.sleep(0.3)  # long enough for the other caller to arrive while this build runs
        (tmp_path / "built").touch()

    monkeypatch.setattr(corpus, "TOKENS_DIR", tmp_path)
    monkeypatch.setattr(corpus, "STREAM_NAMES", ())
    monkeypatch.setattr(corpus, "token_streams_are_current", lambda _: (tmp_path / "built").exists())
    monkeypatch.setattr(corpus, "build_token_streams", build)
    callers = [threading.Thread(target=corpus.load_token_streams, args=(tmp_path / "tokenizer.json",)) for _ in "ab"]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert len(builds) == 1
