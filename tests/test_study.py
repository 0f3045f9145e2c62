"""The sampler study's choice of the default solver, and the study and ablation scripts end to end."""
import json

from bench import ablation, sampler_study
from ecdp.modelfile import DEFAULT_MODEL
from ecdp.sampling import EVALS_PER_STEP
from helpers import write_images


def _row(setting, nfe, *psnrs):
    sets = {name: {"nfe": nfe, "seconds": nfe / 100, "ecdp": {"psnr_y": p}} for name, p in zip(("A", "B"), psnrs)}
    return {"setting": setting, "sets": sets}


DOPRI5 = {"solver": "dopri5", "atol": 1e-4, "rtol": 1e-4}


def _fixed(solver, steps):
    return {"solver": solver, "steps": steps, "grid": "logsnr"}


def test_default_is_the_cheapest_setting_within_the_margin_of_dopri5():
    rows = [_row(DOPRI5, 40, 30.0, 27.0), _row(_fixed("euler", 4), 4, 29.0, 26.0),
            _row(_fixed("heun", 4), 8, 29.96, 26.97), _row(_fixed("rk4", 4), 16, 30.0, 27.0)]
    assert sampler_study.default_setting(rows)["setting"] == _fixed("heun", 4)


def test_default_follows_a_setting_that_beats_the_exact_flow():
    rows = [_row(DOPRI5, 40, 30.0, 27.0), _row(_fixed("euler", 4), 4, 30.0, 27.0),
            _row(_fixed("heun", 3), 6, 31.0, 27.5), _row(_fixed("rk4", 2), 8, 30.97, 27.46)]
    assert sampler_study.default_setting(rows)["setting"] == _fixed("heun", 3)
    assert sampler_study.default_setting(rows[1:]) is None


def test_settings_cover_every_solver_and_grid_up_to_max_nfe():
    cheap = sampler_study.settings(references=(), max_nfe=4)
    dear = sampler_study.settings(references=(), min_nfe=24)
    assert min(s["steps"] * EVALS_PER_STEP[s["solver"]] for s in dear) == 24 and len(dear) == 2 * 12
    assert {(s["solver"], s["steps"]) for s in cheap} == {("euler", 4), ("heun", 2), ("rk4", 1), ("dpmpp2m", 4)}
    assert len(cheap) == 8
    full = sampler_study.settings()
    assert [s["solver"] for s in full[:2]] == ["dopri5", "dopri5"] and len(full) == 2 + 2 * 31


def test_study_and_ablation_scripts_end_to_end(tmp_path, capsys):
    for name in ("A", "B"):
        write_images(tmp_path / name, [(48, 48), (40, 56)], seed=len(name))
    data = [str(tmp_path / "A"), str(tmp_path / "B")]
    study = tmp_path / "study.json"
    sampler_study.main(["run", "--data", *data, "--references", "--max-nfe", "4", "--out", str(study)])
    rows = json.loads(study.read_text())["rows"]
    assert len(rows) == 8 and all(r["sets"]["A"]["nfe"] == 4 for r in rows)
    sampler_study.main(["report", str(study)])
    assert "default (cheapest" in capsys.readouterr().out
    model = str(DEFAULT_MODEL)
    out = tmp_path / "ablation.json"
    ablation.main(["run", "--model", f"a={model}", f"b={model}", "--data", *data, "--solver", "euler", "--steps", "2",
                   "--out", str(out)])
    report = json.loads(out.read_text())
    scores = [{name: m["ecdp"] for name, m in report["models"][k]["sets"].items()} for k in ("a", "b")]
    assert scores[0] == scores[1] and report["sampler"] == {"solver": "euler", "steps": 2, "grid": "logsnr"}
    ablation.main(["report", str(out)])
    assert capsys.readouterr().out.count("| A |") == 3
