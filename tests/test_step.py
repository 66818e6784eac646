"""The modular training step whose cost does not grow with the cells (issue 20), on the CPU: minibatch
indices drawn a stretch of steps at once are the step-by-step stream (also across a checkpoint),
stopped cells masked give the history of stopped cells removed (the CUDA-graph path's rule),
divergence found at evaluation gives the history of a check at every step, and the step loop reads
nothing back to the host between evaluations."""

import io

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from nht.config import expand_cells, validate_config
from nht.core import loop
from nht.domains.modular.data import make_modular_dataset
from nht.domains.modular.samplers import MinibatchSampler, ReplacementSampler
from nht.domains.modular.train import Trainer

from conftest import tiny_modular

CPU = torch.device("cpu")


def cells_for(**overrides):
    return expand_cells(validate_config({"experiments": {"e": tiny_modular(**overrides)}}))


def data_for(cell):
    return make_modular_dataset(cell["op"], cell["p"], cell["train_frac"], cell["split_seed"])


def run(trainer, **kw):
    return loop.run(trainer, code_module="nht.domains.modular.train", progress_every_s=1e9, **kw)


def _sampler(kind):
    if kind == "with_replacement":
        torch.manual_seed(3)
        return ReplacementSampler(85, 16, torch.get_rng_state())
    return MinibatchSampler(85, 16, seed=3)        # 85 = 5 x 16 + 5: a short last minibatch per epoch


@pytest.mark.parametrize("kind", ["with_replacement", "epoch_shuffle"])
def test_chunked_draws_equal_step_by_step_draws_bitwise(kind):
    ref = _sampler(kind)
    steps = [ref.next() for _ in range(40)]
    got, taken = _sampler(kind), []
    for k in (1, 3, 7, 2, 11, 16):                  # 40 steps in stretches of any length
        idx, sizes = got.take(k)
        assert len(sizes) == k and sum(sizes) == len(idx)
        taken.extend(idx.split(sizes))
    assert len(taken) == 40 and all(torch.equal(a, b) for a, b in zip(taken, steps))
    if kind == "epoch_shuffle":
        assert {len(s) for s in steps} == {16, 5}
        assert sorted(torch.cat(steps[:6]).tolist()) == list(range(85))   # an epoch: each example once

    # across a checkpoint: the state after 13 steps, saved and loaded weights-only, goes on identically
    first = _sampler(kind)
    first.take(13)
    buf = io.BytesIO()
    torch.save(first.state(), buf)
    buf.seek(0)
    resumed = _sampler(kind)
    resumed.load(torch.load(buf, weights_only=True))
    idx, _ = resumed.take(27)
    assert torch.equal(idx, torch.cat(steps[13:]))


@pytest.mark.parametrize("sampling", ["with_replacement", "epoch_shuffle"])
def test_stretches_of_any_length_and_a_resume_inside_one_give_the_same_history(tmp_path, sampling):
    cells = cells_for(weight_decay=[0.5, 1.0], init_scale=1, batch_size=16, sampling=sampling, max_steps=60,
                      eval_every=10, stop_margin=10 ** 6, checkpoint_seconds=0)
    data = data_for(cells[0])
    one_step = Trainer(cells, data, CPU, chunk_indices=2 * 16)          # one step per stretch
    ref = run(one_step)
    assert one_step.stretch == 1
    for chunk in (3 * 2 * 16, 10 ** 6):
        trainer = Trainer(cells, data, CPU, chunk_indices=chunk)
        res = run(trainer)
        assert res.history == ref.history and res.status == ref.status
    assert trainer.stretch == 10                                       # a whole evaluation interval

    ckpt = tmp_path / "ckpt.pt"                    # stretches of 3 steps: step 10 lies inside one (9-12)
    assert run(Trainer(cells, data, CPU, chunk_indices=96), checkpoint=ckpt, stop_after_steps=10) is None
    state = torch.load(ckpt, weights_only=True)
    assert state["domain"]["step"] == 10 and state["domain"]["chunk"] is not None
    res = run(Trainer(cells, data, CPU, chunk_indices=96), checkpoint=ckpt)
    assert res.resumed_from_step == 10
    assert res.history == ref.history and res.status == ref.status


@pytest.mark.parametrize("kernel", ["eager", "compiled"])
def test_masked_stopped_cells_give_the_same_history_as_removed_ones(kernel):
    # 16 cells: 4 diverge at once (masked: 12 of 16 slots still active), then 6 stop together (6 of
    # 16 active: the tensors are compacted), the rest at later evaluations
    cells = cells_for(lr=[0.003, 0.01, 0.03, 1e30], weight_decay=[0.3, 3.0], seed=[0, 1], init_scale=1,
                      batch_size=16, max_steps=200, eval_every=10, stop_margin=20, test_threshold=0.04)
    data = data_for(cells[0])
    removed = run(Trainer(cells, data, CPU, stopped="remove", optimizer_kernel=kernel))
    masked = run(Trainer(cells, data, CPU, stopped="mask", optimizer_kernel=kernel))
    stops = sorted(st["stop_step"] for st in removed.status.values())
    statuses = {st["status"] for st in removed.status.values()}
    # the test means something: cells end at several different steps, some diverge, some generalise
    assert len(set(stops)) >= 4 and statuses == {"diverged", "finished"}, removed.status
    assert any(st["stop_reason"] == "generalised+margin" for st in removed.status.values())
    assert masked.status == removed.status
    assert masked.cell_steps == removed.cell_steps
    assert masked.history == removed.history


def test_a_diverged_cell_found_at_evaluation_has_the_history_of_a_check_at_every_step():
    cells = cells_for(lr=[0.01, 1e30], weight_decay=0.5, init_scale=1, batch_size=16, max_steps=60,
                      eval_every=20, stop_margin=10 ** 6, optimizer={"name": "adamw"})
    data = data_for(cells[0])
    late = run(Trainer(cells, data, CPU))                # the trainer's default: checks at evaluations
    every = Trainer(cells, data, CPU)
    every.check_every = 1
    early = run(every)
    bad = next(c.id for c in cells if c["lr"] == 1e30)
    good = next(c.id for c in cells if c["lr"] == 0.01)
    assert late.status[bad]["status"] == "diverged" and 0 < late.status[bad]["stop_step"] < 20
    assert late.status == early.status and late.cell_steps == early.cell_steps
    assert late.history == early.history
    assert [r["step"] for r in late.history[bad]] == [0]       # its history ends at its last finite row
    assert late.cell_steps == 60 + late.status[bad]["stop_step"]
    # the diverged cell does not touch the other: the same curve as that cell trained alone
    alone = run(Trainer([c for c in cells if c.id == good], data, CPU))
    for mine, ref in zip(late.history[good], alone.history[good], strict=True):
        assert mine["step"] == ref["step"]
        for key in ("loss", "V", "test_acc"):
            assert mine[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6)


SYNCS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy"}


class SyncLog(TorchFunctionMode):
    """Records the trainer's step at every tensor method that reads a value back to the host."""

    def __init__(self, trainer):
        super().__init__()
        self.trainer, self.steps = trainer, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in SYNCS:
            self.steps.append(self.trainer.step)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kernel", ["eager", "compiled"])
@pytest.mark.parametrize("optimizer", [{"name": "adamw"}, {"name": "sgd", "momentum": 0.9}])
def test_the_step_loop_reads_nothing_back_between_evaluations(optimizer, kernel):
    cells = cells_for(lr=[0.01, 1e30], weight_decay=0.5, init_scale=1, batch_size=16, max_steps=60,
                      eval_every=20, stop_margin=10 ** 6, optimizer=optimizer)
    trainer = Trainer(cells, data_for(cells[0]), CPU, optimizer_kernel=kernel)
    with SyncLog(trainer) as log:
        res = run(trainer)
    assert sorted({st["status"] for st in res.status.values()}) == ["diverged", "finished"]
    assert log.steps, "the evaluations read their rows back"
    assert sorted(set(log.steps)) == [0, 20, 40, 60], log.steps      # only where the loop evaluates


def _torch_optimizer(model, cell):
    """torch's own optimizer for one cell (the reference every cell of a stacked job must follow)."""
    opt = cell["optimizer"]
    if opt["name"] == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cell["lr"], weight_decay=cell["weight_decay"],
                                 betas=tuple(opt["betas"]), eps=1e-8, foreach=False)
    return torch.optim.SGD(model.parameters(), lr=cell["lr"], weight_decay=cell["weight_decay"],
                           momentum=opt["momentum"], foreach=False)


@pytest.mark.parametrize("kernel", ["eager", "compiled"])
@pytest.mark.parametrize("optimizer, lrs", [({"name": "adamw", "betas": [0.9, 0.999]}, [0.01, 0.003]),
                                            ({"name": "sgd", "momentum": 0.9}, [0.05, 0.01])])
def test_each_cell_of_a_job_follows_torch_s_optimizer(optimizer, lrs, kernel):
    """Cells with different lr and weight decay in one job: each follows torch.optim.AdamW / SGD,
    with the update run eagerly or compiled (nht.core.stacked_optim)."""
    from nht.domains.modular.models import build_model

    cells = cells_for(weight_decay=[0.1, 1.0], lr=lrs, init_scale=1, seed=[0, 1], optimizer=optimizer)
    data = data_for(cells[0])
    trainer = Trainer(cells, data, CPU, optimizer_kernel=kernel)
    assert trainer.optimizer_kernel == kernel
    x, y = torch.as_tensor(data["x_train"]), torch.as_tensor(data["y_train"])
    refs = []
    for cell in cells:
        torch.manual_seed(cell["seed"])
        model = build_model(cell["model"], cell["p"])
        refs.append((model, _torch_optimizer(model, cell)))
    for _ in range(25):
        trainer.train_step()
        for model, opt in refs:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    for pos, (model, _) in enumerate(refs):
        for name, ref in model.named_parameters():
            torch.testing.assert_close(trainer.params[name][pos], ref.detach(), rtol=1e-4, atol=1e-5)


def test_bad_trainer_options_are_refused():
    cells = cells_for(weight_decay=0.5, init_scale=1)
    data = data_for(cells[0])
    with pytest.raises(ValueError, match="stopped"):
        Trainer(cells, data, CPU, stopped="drop")
    with pytest.raises(ValueError, match="graph"):
        Trainer(cells, data, CPU, graph="maybe")
    with pytest.raises(ValueError, match="CUDA"):
        Trainer(cells, data, CPU, graph="on")               # a CUDA graph needs a CUDA device
    with pytest.raises(ValueError, match="chunk_indices"):
        Trainer(cells, data, CPU, chunk_indices=0)
    with pytest.raises(ValueError, match="optimizer kernel"):
        Trainer(cells, data, CPU, optimizer_kernel="fast")
