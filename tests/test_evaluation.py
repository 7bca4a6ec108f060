import torch
import torch.nn.functional as F

from evaluation import knn_predict, linear_probe, topk_accuracy
from runtime import setup_runtime


def demo_knn_predict(feature, feature_bank, feature_labels, classes, knn_k, knn_t):
    """The MoCo CIFAR demo's knn_predict, verbatim apart from names (feature_bank is (D, N) there)."""
    sim_matrix = torch.mm(feature, feature_bank)
    sim_weight, sim_indices = sim_matrix.topk(k=knn_k, dim=-1)
    sim_labels = torch.gather(feature_labels.expand(feature.size(0), -1), dim=-1, index=sim_indices)
    sim_weight = (sim_weight / knn_t).exp()
    one_hot_label = torch.zeros(feature.size(0) * knn_k, classes, device=sim_labels.device)
    one_hot_label = one_hot_label.scatter(dim=-1, index=sim_labels.view(-1, 1), value=1.0)
    pred_scores = torch.sum(one_hot_label.view(feature.size(0), -1, classes) * sim_weight.unsqueeze(dim=-1), dim=1)
    return pred_scores


def test_chunked_knn_equals_the_demo_formula():
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(300, 16, generator=g), dim=1)
    labels = torch.randint(0, 7, (300,), generator=g)
    queries = F.normalize(torch.randn(101, 16, generator=g), dim=1)
    expected = demo_knn_predict(queries, bank.t(), labels, 7, 20, 0.1)
    for chunk in (1, 16, 1000):
        got = knn_predict(queries, bank, labels, 7, k=20, t=0.1, chunk_size=chunk)
        assert torch.allclose(got, expected, rtol=1e-5)
        assert torch.equal(got.argmax(1), expected.argmax(1))


def test_knn_k_larger_than_bank_is_clamped():
    bank = F.normalize(torch.randn(5, 4), dim=1)
    scores = knn_predict(bank, bank, torch.arange(5), 5, k=200)
    assert torch.equal(scores.argmax(1), torch.arange(5))  # each point is its own nearest neighbour


def test_topk_accuracy():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.7, 0.2]])
    labels = torch.tensor([0, 1, 0])
    top1, top5 = topk_accuracy(scores, labels)
    assert abs(top1 - 100 / 3) < 1e-4 and top5 is None  # 3 classes: top-5 undefined
    assert [round(a, 3) for a in topk_accuracy(scores, labels, ks=(1, 2))] == [33.333, 66.667]


def test_linear_probe_separates_linearly_separable_features():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 8, generator=g) * 4
    y = torch.randint(0, 4, (400,), generator=g)
    x = centers[y] + torch.randn(400, 8, generator=g)
    loader = [(x[i:i + 100], y[i:i + 100]) for i in range(0, 400, 100)]
    rt = setup_runtime("fp32")
    top1, top5 = linear_probe(rt, torch.nn.Identity(), loader, loader, 4, epochs=20, batch_size=64, lr=1e-2)
    assert top1 > 95 and top5 is None


def test_every_evaluation_runs_the_network_in_eval_mode_and_restores_its_mode():
    """BatchNorm in training mode would normalise each eval batch by its own statistics (and SplitBatchNorm would
    crash on a ragged last batch): features must come from eval mode whatever mode the caller left."""
    from torch.utils.data import DataLoader, TensorDataset

    from evaluation import extract_features
    from models import SplitBatchNorm

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), SplitBatchNorm(4, num_splits=4), torch.nn.Flatten())
    net(torch.randn(16, 3, 6, 6))  # some running statistics
    images, labels = torch.randn(10, 3, 6, 6), torch.arange(10)  # 10 = batches of 4, 4 and a ragged 2
    rt = setup_runtime("fp32")
    net.train()
    feats, _ = extract_features(rt, net, DataLoader(TensorDataset(images, labels), batch_size=4), normalize=False)
    assert net.training  # the caller's mode is back
    net.eval()
    with torch.no_grad():
        assert torch.allclose(feats, net(images), atol=1e-6)


def test_the_augmented_linear_protocols_draw_new_views_every_epoch():
    """lincls and finetune train the head on augmented batches; every epoch drew epoch 0's order and views again."""
    import datasets
    from augmentations import build_transform
    from evaluation import train_linear_head
    from loading import TransformDataset, make_train_loader

    splits = datasets.load_splits("synthetic", subset=16)
    dataset = TransformDataset(splits.pretrain, build_transform("supervised", 32))
    rt = setup_runtime("fp32", normalize=(splits.info.mean, splits.info.std))
    loader = make_train_loader(rt, dataset, 8, 0, seed=1)
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, images):
            seen.append(images.clone())
            return images.mean(dim=(2, 3))

    head = torch.nn.Linear(3, 10)
    train_linear_head(rt, Recorder(), head, loader, 2, torch.optim.SGD(head.parameters(), lr=0.1), lambda e: 0.1)
    first, second = torch.cat(seen[:2]), torch.cat(seen[2:])
    assert len(seen) == 4 and not torch.equal(first, second)
