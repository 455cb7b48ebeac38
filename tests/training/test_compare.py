"""A fair champion/challenger: both models judged on rows neither trained on, whichever was
registered first; bad input moves no alias and writes no tag."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.support.panels import CATALOG, FAST
from tests.support.tracking import TrackingStores
from training.bundle import MODEL_NAME, client_for
from training.cli import app
from training.compare import Contender, unseen_from, unseen_rows
from training.exceptions import ComparisonError, PromotionRejectedError
from training.promote import compare_registered, promote
from training.registry import CHAMPION, log_training
from training.train import TrainConfig, fit


@pytest.fixture(scope="module")
def big_and_small(synthetic):
    """Two models on the same months: one trained on 400 SMEs, one on 60 of them."""
    panel, truth = synthetic
    smes = sorted(panel["sme_id"].unique())
    config = TrainConfig(seed=1, **FAST)
    big = fit(panel[panel["sme_id"].isin(smes[:400])], CATALOG, config, truth=truth)
    small = fit(panel[panel["sme_id"].isin(smes[:60])], CATALOG, config, truth=truth)
    return big, small


def _tags(store: str, version: str) -> dict[str, str]:
    return dict(client_for(store).get_model_version(MODEL_NAME, version).tags)


def _champion(store: str) -> str:
    return str(client_for(store).get_model_version_by_alias(MODEL_NAME, CHAMPION).version)


@pytest.mark.parametrize("order", ["big first", "small first"])
def test_a_model_trained_on_fewer_smes_never_replaces_a_stronger_one(
    order: str, big_and_small, synthetic, tmp_path: Path, tracking_stores: TrackingStores
) -> None:
    big, small = big_and_small
    panel, _ = synthetic
    store = tracking_stores.new(tmp_path)
    first, second = (big, small) if order == "big first" else (small, big)
    v1 = log_training(first, tracking_uri=store).version
    # the AUC gate is under test: ECE is given room (the small model is poorly calibrated)
    assert promote(store, panel=panel, max_ece=1.0).promoted  # no champion yet: own gates
    v2 = log_training(second, tracking_uri=store).version
    if order == "big first":
        with pytest.raises(PromotionRejectedError, match="auc") as info:
            promote(store, panel=panel, max_ece=1.0)
        assert "AUC challenger - champion" in info.value.comparison  # what the gate read
        assert _champion(store) == v1
        # the rejection is recorded on the rejected version only
        assert _tags(store, v2)["promotion_decision"] == "rejected"
        assert _tags(store, v1)["promotion_decision"] == "promoted"
        # `scf-risk compare` shows the same verdict, on the rows both runs logged as OOT
        shown = CliRunner().invoke(app, ["compare", "--tracking-uri", store])
        assert shown.exit_code == 0, shown.output
        assert "unseen by both models" in shown.stdout and "DeLong" in shown.stdout
        comparison = compare_registered(store)
        assert set(comparison.metrics) == {"champion", "challenger"}
        assert comparison.versions == {"champion": v1, "challenger": v2}
        assert comparison.rows == 60 * 6  # the small model's SMEs over the 6 OOT months
        d = comparison.auc_difference
        assert d["low"] < d["diff"] < d["high"]
    else:
        decision = promote(store, panel=panel, max_ece=1.0)
        assert decision.promoted and _champion(store) == v2
        assert decision.metrics["auc_delta"] > 0.005
        assert _tags(store, v1)["superseded_by"] == v2
        # and the small model does not come back
        with pytest.raises(PromotionRejectedError, match="auc"):
            promote(store, v1, panel=panel, max_ece=1.0)
        assert _champion(store) == v2


def test_rows_unseen_by_both_models(big_and_small, synthetic) -> None:
    big, _ = big_and_small
    panel, _ = synthetic
    c = Contender("champion", "1", big.model)
    rows = unseen_rows(panel, [c])
    cutoff = unseen_from(c)
    last_train = pd.Period(max(big.model.train_months), "M").end_time.normalize()
    assert cutoff == last_train + pd.Timedelta(days=365)
    assert (rows["as_of"] >= cutoff).all() and rows["default_12m"].notna().all()
    assert not set(rows["as_of"].dt.strftime("%Y-%m")) & set(big.model.train_months)
    assert rows["as_of"].nunique() == 6  # the newest 6 matured months
    # a model whose training months reach later leaves fewer rows
    later = dataclasses.replace(big.model, train_months=(*big.model.train_months, "2022-09"))
    fewer = unseen_rows(panel, [c, Contender("challenger", "2", later)], n_months=None)
    assert fewer["as_of"].min() == pd.Timestamp("2023-09-30")
    with pytest.raises(ComparisonError, match="no matured rows unseen by both"):
        unseen_rows(panel[panel["as_of"] < cutoff], [c])
    blind = dataclasses.replace(big.model, train_months=())
    with pytest.raises(ComparisonError, match="does not record its training months"):
        unseen_rows(panel, [Contender("challenger", "3", blind)])


def test_bad_input_moves_no_alias_and_writes_no_tag(
    big_and_small, synthetic, tmp_path: Path
) -> None:
    big, small = big_and_small
    panel, _ = synthetic
    store = f"sqlite:///{tmp_path}/mlflow.db"
    runner = CliRunner()
    # a read command never creates a tracking store
    missing = runner.invoke(app, ["compare", "--tracking-uri", store])
    assert missing.exit_code == 1 and "no tracking store" in missing.stderr
    assert not (tmp_path / "mlflow.db").exists()
    assert runner.invoke(app, ["promote", "--tracking-uri", store]).exit_code == 1
    assert not (tmp_path / "mlflow.db").exists()

    v1 = log_training(big, tracking_uri=store).version
    no_champion = runner.invoke(app, ["compare", "--tracking-uri", store])
    assert no_champion.exit_code == 1 and "no 'champion'" in no_champion.stderr
    assert promote(store, panel=panel, max_ece=1.0).promoted
    # data holding no row unseen by both: nothing recorded
    v2 = log_training(small, tracking_uri=store).version
    early = panel[panel["as_of"] < pd.Timestamp("2022-06-30")]
    with pytest.raises(ComparisonError, match="no matured rows unseen by both"):
        promote(store, panel=early)
    # a bundle without training months
    blind = dataclasses.replace(small, model=dataclasses.replace(small.model, train_months=()))
    v3 = log_training(blind, tracking_uri=store).version
    refused = runner.invoke(app, ["promote", "--tracking-uri", store])
    assert refused.exit_code == 1 and "does not record its training months" in refused.stderr
    assert _champion(store) == v1
    assert "promotion_decision" not in _tags(store, v2)
    assert "promotion_decision" not in _tags(store, v3)
    assert "superseded_by" not in _tags(store, v1)
    # --reload without an admin key is refused before anything happens
    reload = runner.invoke(
        app, ["promote", "--version", v2, "--tracking-uri", store, "--reload", "http://x"],
        env={"SCF_RISK_ADMIN_KEY": ""},
    )  # fmt: skip
    assert reload.exit_code == 1 and "SCF_RISK_ADMIN_KEY" in reload.stderr
    assert _champion(store) == v1 and "promotion_decision" not in _tags(store, v2)
    # the side-by-side table on the rows both runs logged
    shown = runner.invoke(app, ["compare", "--tracking-uri", store])
    assert shown.exit_code == 1  # the challenger (v3) cannot be compared
    noop = runner.invoke(app, ["promote", "--version", v1, "--tracking-uri", store])
    assert noop.exit_code == 0 and "already the champion" in noop.stderr


def test_reload_asks_the_service_with_the_admin_key() -> None:
    import http.server
    import json
    import threading

    from training.exceptions import ModelLoadError
    from training.promote import reload_service

    seen: list[tuple[str, str | None]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append((self.path, self.headers.get("X-API-Key")))
            ok = self.headers.get("X-API-Key") == "admin-secret"
            body = json.dumps({"reloaded": True, "version": "2"} if ok else {"detail": "no"})
            self.send_response(200 if ok else 403)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert reload_service(url, "admin-secret") == {"reloaded": True, "version": "2"}
        with pytest.raises(ModelLoadError, match="answered 403"):
            reload_service(url + "/", "wrong")
        with pytest.raises(ComparisonError, match="SCF_RISK_ADMIN_KEY"):
            reload_service(url, None)
    finally:
        server.shutdown()
    assert seen == [("/v1/admin/reload", "admin-secret"), ("/v1/admin/reload", "wrong")]
