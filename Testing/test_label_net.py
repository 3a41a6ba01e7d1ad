"""The pixel-space tumour label net: its training pairs, learning, saving, and labelling a volume on its own grid."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from head_phantom import synthetic_head
from xdiffusion.data.loaders import Subject
from xdiffusion.data.samples import IntensityScale
from xdiffusion.model.label_net import INPUT_CHANNELS, TumourLabelNet, label_net_inputs
from xdiffusion.model.label_training import (LabelPairs, LesionLook, ScanLook, build_lesion_volumes, dice_scores,
                                             evaluate_label_net, label_pair, resume_point, train_label_net)
from xdiffusion.tumour_labels import label_volume

TINY = (4, 4, 8, 8, 16, 4)
SIDE = 64


@pytest.fixture(scope="module")
def lesion_volumes():
    image, brain = synthetic_head()
    return build_lesion_volumes([Subject("phantom", {"t1": image}, brain_mask=brain)], variants=2, work_sides=(40, 48), seed=3)


def test_pairs_carry_the_input_labels_and_signed_distance(lesion_volumes):
    volume = lesion_volumes[0]
    seen_given = seen_segment = 0
    for seed in range(30):
        inputs, target = label_pair(volume, np.random.default_rng(seed), SIDE)
        assert inputs.shape == (INPUT_CHANNELS, SIDE, SIDE) and target.shape == (SIDE, SIDE)
        assert set(np.unique(target)) <= {0, 1, 2, 3}
        flag, distance = inputs[5], inputs[6]
        assert np.ptp(flag) == 0 and np.ptp(distance) == 0  # constant maps, padding included
        assert inputs[0, 0, 0] == -1 and inputs[1, 0, 0] == -1  # padded with background
        if flag[0, 0] == 0:  # segmentation of the input slice: no labels given, the target is the input slice
            seen_segment += 1
            assert distance[0, 0] == 0 and not inputs[2:5].any() and not inputs[7:].any()
        else:
            seen_given += 1
            if distance[0, 0] == 0:  # on the input slice itself the guess is the given labels' ellipses
                assert inputs[7:].any() == inputs[2:5].any()
    assert seen_given and seen_segment


def test_pairs_are_deterministic(lesion_volumes):
    pairs = LabelPairs(lesion_volumes, seed=4, side=SIDE)
    a, b = pairs[7], pairs[7]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(pairs[8][0], a[0])


def _tumour_contrast(inputs: np.ndarray, target: np.ndarray) -> float:
    """Mean input-slice value in its tumour minus that in a 3-pixel ring around it (model units)."""
    from scipy import ndimage

    tumour = target > 0 if inputs[5, 0, 0] == 0 else inputs[2:5].any(axis=0)  # no labels given: target = input slice
    ring = ndimage.binary_dilation(tumour, iterations=3) & ~tumour & (inputs[1] > -1)
    return float(inputs[1][tumour].mean() - inputs[1][ring].mean()) if tumour.any() and ring.any() else float("nan")


def test_restyled_pairs_keep_labels_and_change_tumour_contrast(lesion_volumes):
    volume = lesion_volumes[1]
    changed = clean = 0
    for seed in range(40):
        plain, plain_target = label_pair(volume, np.random.default_rng(seed), SIDE, augment=False)
        styled, target = label_pair(volume, np.random.default_rng(seed), SIDE)
        again, _ = label_pair(volume, np.random.default_rng(seed), SIDE)
        np.testing.assert_array_equal(styled, again)  # deterministic in the seed
        assert np.isfinite(styled).all()
        np.testing.assert_array_equal(target, plain_target)  # labels, geometry and the other channels as painted
        np.testing.assert_array_equal(styled[2:], plain[2:])
        assert (styled[1][plain[1] == -1] < -0.999).all()  # background and padding stay dark
        clean += np.array_equal(styled, plain)
        before, after = _tumour_contrast(plain, target), _tumour_contrast(styled, target)
        changed += bool(np.isfinite(before) and abs(after - before) > 0.05)
    assert clean >= 4  # a share is left as painted
    assert changed >= 16  # most of the rest see the tumour in another contrast


def test_lesion_look_redraws_each_region_relative_to_its_tissue():
    from scipy import ndimage

    healthy = np.zeros((60, 60), np.float32)
    healthy[4:56, 4:56] = 100.0
    labels = np.zeros((60, 60), np.uint8)
    labels[10:50, 4:50] = 2  # touches the background edge
    labels[22:40, 20:44] = 3
    labels[28:34, 34:40] = 1
    painted = healthy * (1.0 + 0.5 * (labels > 0))
    look = LesionLook({1: 0.5, 2: 2.0, 3: 1.5}, {1: False, 2: True, 3: False}, reference=100.0, texture=0.0,
                      texture_sigma=1.0, edge_sigma=1.0)
    out = look.apply(painted, healthy, labels, np.random.default_rng(0))

    def beyond(region: np.ndarray, inner: np.ndarray) -> np.ndarray:  # away from an inner region's blurred edge
        return region & ~ndimage.binary_dilation(inner, iterations=5)

    np.testing.assert_allclose(out[beyond(labels == 2, labels == 3)], 200.0, rtol=1e-4)  # infiltrating: 2x the tissue
    np.testing.assert_allclose(out[beyond(labels == 3, labels == 1)], 150.0, rtol=1e-4)  # replacing: 1.5x the reference
    np.testing.assert_allclose(out[labels == 1], 50.0)  # the innermost region is drawn last: exact
    assert not out[healthy == 0].any()  # the background stays empty
    np.testing.assert_array_equal(out[:, 56:], painted[:, 56:])  # tissue away from the tumour unchanged
    drawn = LesionLook.draw(np.random.default_rng(1), healthy, labels)
    assert drawn.reference == 100.0 and all(1 / 2.8 <= f <= 2.8 for f in drawn.factors.values())


def test_scan_look_keeps_background_and_stays_finite_and_positive():
    rng = np.random.default_rng(2)
    image = np.zeros((48, 48), np.float32)
    image[6:42, 6:42] = rng.uniform(20, 200, (36, 36))
    for seed in range(20):
        look = ScanLook.draw(np.random.default_rng(seed), image)
        out = look.apply(image, np.random.default_rng(seed))
        assert np.isfinite(out).all() and (out[image > 0] > 0).all()
        assert not out[image == 0].any()
        np.testing.assert_array_equal(look.apply(image, np.random.default_rng(seed)), out)
    inverted = ScanLook(200.0, 1.0, True, np.ones_like(image), 0.0).apply(image, rng)
    assert np.corrcoef(inverted[image > 0], image[image > 0])[0, 1] < -0.99  # bright tissue turns dark


def test_validation_logs_the_guess_beside_the_net():
    torch.manual_seed(0)
    net = TumourLabelNet(features=TINY)
    truth = np.zeros((32, 32), np.uint8)
    truth[4:10, 4:10] = 2
    half = truth.copy()
    half[4:10, 7:10] = 0  # the guess covers half the tumour: Dice 2/3
    image = np.zeros((32, 32), np.float32)
    given = torch.from_numpy(label_net_inputs(image, image, truth, 2.0, half))
    segment = torch.from_numpy(label_net_inputs(image, image, None, 0.0))
    target = torch.from_numpy(truth.astype(np.int64))
    scores = evaluate_label_net(net, [(given, target), (segment, target)])
    assert scores["guess_wt"] == pytest.approx(2 / 3)
    assert scores["wt_given"] is not None


def test_the_log_stays_readable_when_columns_are_added(tmp_path):
    from xdiffusion.side_training import append_row, best_logged

    log = tmp_path / "label_metrics.csv"
    log.write_text("step,loss,dice_wt,dice_tc,dice_et\n250,1.0,0.3,0.1,0.1\n500,0.9,0.55,0.5,0.2\n")
    append_row(log, {"step": 750, "loss": 0.8, "dice_wt": 0.5, "dice_tc": 0.6, "dice_et": 0.3, "dice_wt_given": 0.6,
                  "guess_dice_wt": 0.7})
    append_row(log, {"step": 1000, "loss": 0.7, "dice_wt": 0.6, "dice_tc": 0.6, "dice_et": 0.3, "dice_wt_given": 0.65,
                  "guess_dice_wt": 0.7})
    rows = list(csv.DictReader(log.open()))
    assert [row["step"] for row in rows] == ["250", "500", "750", "1000"]
    assert rows[0]["guess_dice_wt"] == "" and rows[3]["guess_dice_wt"] == "0.7" and None not in rows[3]
    assert best_logged(log, "dice_wt", -1.0) == 0.6


def test_a_resumed_schedule_continues_the_uninterrupted_one():
    from xdiffusion.side_training import cosine_schedule

    def rates(start: int, count: int) -> list[float]:
        optimiser = torch.optim.SGD([torch.nn.Parameter(torch.zeros(()))], lr=2.0)
        schedule = cosine_schedule(optimiser, steps=10, start_step=start)
        seen = []
        for _ in range(count):
            seen.append(optimiser.param_groups[0]["lr"])
            optimiser.step()
            schedule.step()
        return seen

    whole = rates(0, 12)
    assert whole[0] == pytest.approx(2.0) and whole[10] == pytest.approx(0.1) and whole[11] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(whole[:10], whole[1:10]))
    np.testing.assert_allclose(rates(6, 6), whole[6:])


def test_dice_scores_skip_absent_regions():
    truth = np.zeros((1, 4, 4), np.uint8)
    truth[0, :2, :2] = 2
    scores = dice_scores(truth.copy(), truth)
    assert scores["wt"] == 1.0 and scores["tc"] is None and scores["et"] is None
    assert dice_scores(np.zeros_like(truth), truth)["wt"] == 0.0


def test_training_learns_and_resumes(lesion_volumes, tmp_path):
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    net = TumourLabelNet(features=TINY)
    fixed = [LabelPairs(lesion_volumes, seed=9, side=SIDE)[i] for i in range(16)]
    inputs, targets = torch.stack([p[0] for p in fixed]), torch.stack([p[1] for p in fixed])[:, None]
    loss = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    with torch.no_grad():
        before = loss(net(inputs), targets).item()
    step = train_label_net(net, lesion_volumes, lesion_volumes, tmp_path, steps=60, batch_size=4, lr=3e-3,
                           validate_every=30, side=SIDE)
    assert step == 60
    rows = (tmp_path / "label_metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # header + two validations
    logged = list(csv.DictReader(rows))
    assert all(0.0 <= float(row["guess_dice_wt"]) <= 1.0 and row["dice_wt_given"] != "" for row in logged)
    with torch.no_grad():
        assert loss(net.eval()(inputs), targets).item() < before  # the Dice + cross-entropy loss falls
    resumed, start = resume_point(tmp_path)
    assert start == 60 and resumed is not None
    for a, b in zip(resumed.parameters(), net.parameters()):
        assert torch.equal(a, b)
    assert (tmp_path / "label_net" / "config.json").is_file()


def test_label_volume_keeps_given_labels_and_geometry_axis():
    torch.manual_seed(0)
    net = TumourLabelNet(features=TINY)
    rng = np.random.default_rng(0)
    image = rng.random((20, 24, 18)).astype(np.float32) * 100
    known = np.zeros((20, 18), np.uint8)
    known[5:9, 6:10] = 2
    known[6:8, 7:9] = 3
    images = [image[:, 11, :]]
    labels = label_volume(net, image, axis=1, spacing=(1.0, 1.0, 1.0), indices=[11], input_images=images,
                          scale=IntensityScale.from_slices(images), input_labels=[known])
    assert labels.shape == image.shape and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels[:, 11, :], known)
    assert set(np.unique(labels)) <= {0, 1, 2, 3}


def test_inputs_mark_unknown_labels_apart_from_no_tumour():
    image = np.zeros((8, 8), np.float32)
    unknown = label_net_inputs(image, image, None, 0.0)
    healthy = label_net_inputs(image, image, np.zeros((8, 8), np.uint8), 3.0)
    assert unknown[5].max() == 0 and healthy[5].min() == 1
    assert healthy[6, 0, 0] == pytest.approx(3.0 / 16.0)
    assert not unknown[7:].any() and not healthy[7:].any()  # no guess given: empty guess maps
    guess = np.zeros((8, 8), np.uint8)
    guess[2:4, 2:4] = 1
    guessed = label_net_inputs(image, image, guess, 0.0, guess)
    np.testing.assert_array_equal(guessed[7], guess == 1)


def test_only_the_tumour_on_the_input_slice_is_kept():
    from xdiffusion.tumour_labels import keep_tumour_seen

    labels = np.zeros((12, 10, 10), np.uint8)
    labels[3:7, 2:5, 2:5] = 2  # crosses input slice 5
    labels[4:6, 3:4, 3:4] = 1
    labels[9:11, 6:9, 6:9] = 2  # a separate blob the input slice never shows
    kept = keep_tumour_seen(labels, [5])
    assert kept[3:7, 2:5, 2:5].all() and (kept[4:6, 3:4, 3:4] == 1).all()
    assert not kept[9:11].any()
    assert not keep_tumour_seen(labels, [1]).any()  # an input slice without tumour: no tumour comes back


def test_an_untrained_net_answers_the_ellipsoid_guess_where_labels_are_given():
    torch.manual_seed(0)
    net = TumourLabelNet(features=TINY, guess_logit=40.0)  # a scale beyond what untrained features reach
    image = np.zeros((32, 32), np.float32)
    given = np.zeros((32, 32), np.uint8)
    given[8:20, 10:22] = 2
    guess = np.zeros((32, 32), np.uint8)
    guess[10:18, 12:20] = 2
    guess[13:15, 15:17] = 1
    from xdiffusion.model.label_net import predict_labels

    labels = predict_labels(net, label_net_inputs(image, image, given, 4.0, guess)[None])[0]
    np.testing.assert_array_equal(labels, guess)
    unknown = net(torch.from_numpy(label_net_inputs(image, image, None, 0.0)[None]))
    plain = net.network(torch.from_numpy(label_net_inputs(image, image, None, 0.0)[None]))
    torch.testing.assert_close(unknown, plain)  # no labels given: no guess, no bias
