"""Outside check of our evaluation: RecBole's own SASRec on MovieLens-100K, leave-one-out (time
order), full ranking over all items, Recall/NDCG@{1,5,10}. RecBole's full-sort evaluation of
sequential models leaves each user's history items rankable (it passes no history mask for
them), which is our protocol too, so its figures compare with ours as they are.

Runs in its own environment, since RecBole's dependencies are not the project's:

    python3 -m venv /tmp/rbenv && . /tmp/rbenv/bin/activate
    pip install torch==2.13.0 && pip install recbole==1.2.1 "numpy<2" "pandas<2.3" "scipy<1.14" \
        ray==2.6.3 thop tensorboard
    python bench/recbole_sasrec.py [--epochs 200] [--hidden 256] [--layers 2] [--heads 2] \
        [--dropout 0.3] [--batch-size 128] [--stopping-step 10] [--workdir /tmp/recbole-run] \
        [--evaluate /tmp/recbole-run/saved/SASRec-….pth]

RecBole trains on every prefix of every training sequence (97k rows a epoch on ML-100K, where
our SASRec takes 2.4k sliding windows with a loss at every position), so one epoch costs about
40× ours: on 2 CPU cores use a smaller model or fewer epochs (the figures in the README say
which).

The dataset is the one RecBole's wheel ships (the files our ``movielens_100k`` reader reads).
Hyper-parameters default to ours (configs/ml-100k/prepare.yaml: hidden 256, 2 blocks, 2 heads,
dropout 0.3, lr 1e-3, batch 128, full-softmax CE, 50-item histories, early stop on valid NDCG@10
after 10 epochs).
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--batch-size", type=int, default=128, help="Training sequences per step.")
    parser.add_argument("--stopping-step", type=int, default=10,
                        help="Stop after this many evaluations without a better valid NDCG@10.")
    parser.add_argument("--workdir", default="/tmp/recbole-run",
                        help="RecBole writes its logs, tensorboard files and checkpoints here.")
    parser.add_argument("--evaluate", metavar="CHECKPOINT",
                        help="Skip training: score this RecBole checkpoint (saved/*.pth of a run "
                             "with the same options, e.g. one stopped early) on the test split.")
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's Config reads overrides from the command line too
    # RecBole 1.2.1 pickles its Config into checkpoints and reloads them with torch.load's
    # default, which PyTorch ≥ 2.6 restricts to plain weights: the best model's reload for the
    # test would fail. These are checkpoints this script's own run wrote.
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    os.makedirs(args.workdir, exist_ok=True)
    os.chdir(args.workdir)

    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    config = Config(model="SASRec", dataset="ml-100k", config_dict={
        "data_path": os.path.join(os.path.dirname(recbole.__file__), "dataset_example"),
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": 50, "train_neg_sample_args": None, "loss_type": "CE",
        "hidden_size": args.hidden, "inner_size": 4 * args.hidden, "n_layers": args.layers,
        "n_heads": args.heads, "hidden_dropout_prob": args.dropout,
        "attn_dropout_prob": args.dropout, "learning_rate": 1e-3, "train_batch_size": args.batch_size,
        "epochs": args.epochs, "stopping_step": args.stopping_step, "eval_step": 1,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full",
                      "group_by": "user"},
        "metrics": ["Recall", "NDCG"], "topk": [1, 5, 10], "valid_metric": "NDCG@10",
        "device": "cpu", "use_gpu": False, "seed": args.seed, "reproducibility": True,
        "show_progress": False, "checkpoint_dir": os.path.join(args.workdir, "saved")})
    init_logger(config)  # RecBole's per-epoch lines (to the console and workdir/log/)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    model = SASRec(config, train.dataset).to(config["device"])
    trainer = Trainer(config, model)
    if args.evaluate is None:
        trainer.fit(train, valid, saved=True, show_progress=False)
    result = trainer.evaluate(test, load_best_model=True, model_file=args.evaluate,
                              show_progress=False)
    print(f"RecBole {recbole.__version__} SASRec on ml-100k: {dataset.user_num - 1} users, "
          f"{dataset.item_num - 1} items; leave-one-out (time order), full ranking, history "
          f"items rankable; hidden {args.hidden}, {args.layers} blocks, dropout {args.dropout}, "
          f"batch {args.batch_size}")
    keys = ("recall@1", "recall@5", "recall@10", "ndcg@5", "ndcg@10")
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    print("| " + " | ".join(f"{float(result[k]):.4f}" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
