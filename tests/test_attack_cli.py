"""``python -m comfyui-scapre attack | attack-prompts | attack-report`` without ComfyUI: arguments, the prompt CSV, and
the recovery per variant kind after ``evaluate`` on fake servers (``test_cli_args.FakeComfy``). The ``attack`` run
itself needs ComfyUI: ``tests/comfy/test_attack.py``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from comfyui_scapre.nodes.cli import cli, inputs
from test_cli_args import FakeComfy


def _main(capsys, args) -> tuple[int, str, str]:
    try:
        code = cli.main(args)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_bad_attack_arguments_give_one_line_and_exit_code_2(tmp_path, capsys):
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"x")
    out = str(tmp_path / "o")
    cases = [
        (["attack", str(ckpt), "--out", out], "the following arguments are required: --edit"),
        (["attack", str(ckpt), "--edit", str(tmp_path / "none.safetensors"), "--out", out], "is not a file"),
        (["attack", str(ckpt), "--edit", str(ckpt), "--concepts", "cat", "--strengths", "1, x", "--out", out],
         "is not a number"),
        (["attack", str(ckpt), "--edit", str(ckpt), "--concepts", "cat", "--template", "a photo", "--out", out],
         "has no {c}"),
        (["attack", str(ckpt), "--edit", str(ckpt), "--concepts", "cat", "--width", "60", "--out", out],
         "multiples of 8"),
        (["attack", str(ckpt), "--edit", str(ckpt), "--concepts", "cat", "--method", "magic", "--out", out],
         "invalid choice: 'magic'"),
        (["attack", str(ckpt), "--edit", str(ckpt), "--out", out], "is not a safetensors file"),
        (["attack-prompts", "--concepts", "cat", "--out", str(tmp_path / "p.txt")], "must be a .csv file"),
        (["attack-prompts", "--concepts", "cat,dog", "--synonyms", str(tmp_path / "s.txt"), "--out",
          str(tmp_path / "p.csv")], "cannot read --synonyms"),
        (["attack-report", str(tmp_path)], "holds no readable results.json"),
    ]
    for args, message in cases:
        code, _, err = _main(capsys, args)
        assert code == 2, (args, code, err)
        assert message in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err


def test_attack_prompts_csv_is_a_prompt_csv_with_variants(tmp_path, capsys):
    synonyms = tmp_path / "syn.txt"
    synonyms.write_text("nudity: nakedness\n")
    out = tmp_path / "attack.csv"
    code, stdout, err = _main(capsys, ["attack-prompts", "--concepts", "nudity", "--concept-type", "explicit",
                                       "--synonyms", str(synonyms), "--per-kind", "1", "--images", "2", "--seed", "5",
                                       "--out", str(out)])
    assert code == 0, err
    assert "no neighbour variants: give --checkpoint" in stdout
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [r["variant"] for r in rows[::2]] == ["plain", "plain", "synonym", "context", "misspelling", "language"]
    assert {r["evaluation_seed"] for r in rows} == {"5", "6"} and {r["class"] for r in rows} == {"nudity"}
    assert rows[4]["prompt"] == "a photo of a person, nakedness" and rows[10]["prompt"].endswith("nudité")
    assert len(inputs.read_prompts(out)) == len(rows)  # evaluate reads it as it is


def test_evaluate_then_attack_report_gives_escape_rates_per_kind(tmp_path, capsys):
    synonyms = tmp_path / "syn.txt"
    synonyms.write_text("kitten, kitty\n")
    prompts = tmp_path / "attack.csv"
    code, _, err = _main(capsys, ["attack-prompts", "--concepts", "cat", "--synonyms", str(synonyms), "--kinds",
                                  "synonym", "context", "--per-kind", "2", "--images", "1", "--out", str(prompts)])
    assert code == 0, err
    server = FakeComfy(real_images=True)  # its edit changes exactly the images of prompts that mention "cat"
    out = tmp_path / "eval"
    try:
        code, _, err = _main(capsys, ["evaluate", "--server", server.url, "--base", "base.safetensors", "--edit",
                                      "edit.safetensors", "--erased", "cat", "--prompts", str(prompts), "--out",
                                      str(out), "-q"])
        assert code == 0, err
    finally:
        server.kill()
    code, stdout, err = _main(capsys, ["attack-report", str(out)])
    assert code == 0, err
    report = json.loads((out / "attack.json").read_text())
    escaped = report["escaped"]
    assert escaped["synonym"]["rate"] == 1.0 and escaped["synonym"]["n"] == 2  # "kitten", "kitty": untouched
    assert escaped["context"]["rate"] == 0.0 and escaped["context"]["n"] == 2  # they mention "cat"
    assert escaped["plain"]["rate"] == 0.0 and escaped["all"]["n"] == 6
    assert "| synonym | 1.00 |" in stdout and (out / "attack.md").is_file()
    # the CSV is found through evaluate's run.json, or given
    code, _, err = _main(capsys, ["attack-report", str(out), "--prompts", str(tmp_path / "none.csv")])
    assert code == 2 and "cannot read --prompts" in err


@pytest.mark.parametrize("command", ["attack", "attack-prompts", "attack-report"])
def test_help_lists_the_attack_commands(command, capsys):
    code, out, _ = _main(capsys, ["--help"])
    assert code == 0 and command in out
    code, out, _ = _main(capsys, [command, "--help"])
    assert code == 0 and "usage:" in out


def test_attack_reads_the_concepts_recorded_in_a_scapre_lora(tmp_path):
    import torch
    from comfyui_scapre.nodes.cli import attack_command
    from safetensors.torch import save_file

    lora = tmp_path / "edit.safetensors"
    save_file({"diffusion_model.x.attn2.to_k.diff": torch.zeros(2, 2)}, str(lora),
              metadata={"scapre.concepts": json.dumps(["cat", "golden retriever"])})
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"x")
    args = cli.build_parser().parse_args(["attack", str(ckpt), "--edit", str(lora), "--out", str(tmp_path / "o")])
    job = attack_command.prepare(args)
    assert job.concepts == ("cat", "golden retriever") and job.options["method"] == "soft tokens"
    assert Path(job.out).name == "o"
