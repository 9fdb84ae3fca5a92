"""CI smoke run of the recommendation-quality tool (bench/quality/eval.py, docs/QUALITY.md)
on a small synthetic shop: Eddy with default flags must beat popularity by a margin that
popularity cannot meet, and a node whose personal sources are switched off (so that it
serves popularity only) must miss that margin, so the check can fail. About 30 s."""
import json
import os
import subprocess
import unittest

import eddylib as L

EVAL = os.path.normpath(os.path.join(L.HERE, "..", "..", "bench", "quality", "eval.py"))
MARGIN = 2.0   # Eddy's full-ranking HR@10 over popularity's
PREQ_MARGIN = 2.0  # prequential (scored on every event before the positive): ~5x


def run_eval(*node_args):
    args = ["/usr/bin/python3", EVAL, "--data", "synthetic", "--users", "150",
            "--prequential", "300", "-o", "json", "--node", L.require_node()]
    args += [f"--node-arg={a}" for a in node_args]
    r = subprocess.run(args, capture_output=True, text=True, timeout=240)
    if r.returncode != 0:
        raise AssertionError(f"eval.py exited {r.returncode}\nstderr: {r.stderr[-3000:]}")
    return json.loads(r.stdout)["runs"][0]


class QualitySmoke(unittest.TestCase):
    def check_metrics(self, res):
        for proto in ("full", "sampled", "prequential"):
            for m, s in res[proto].items():
                self.assertGreater(s["n"], 50, (proto, m))
                for k in ("hr@10", "ndcg@10", "mrr", "coverage"):
                    self.assertGreaterEqual(s[k], 0.0)
                    self.assertLessEqual(s[k], 1.0)
                self.assertLessEqual(s["ndcg@10"], s["hr@10"])

    def test_defaults_beat_popularity(self):
        res = run_eval()
        self.assertEqual(res["node_exit"], 0)
        self.check_metrics(res)
        full, preq = res["full"], res["prequential"]
        # the planted structure is there: the item-kNN baseline finds it
        self.assertGreater(full["item-kNN"]["hr@10"], MARGIN * full["popularity"]["hr@10"])
        self.assertGreaterEqual(full["eddy"]["hr@10"], MARGIN * full["popularity"]["hr@10"],
                                full)
        self.assertGreaterEqual(preq["eddy"]["hr@10"], PREQ_MARGIN * preq["popularity"]["hr@10"],
                                preq)
        # a personal list covers much more of the catalogue than one global list
        self.assertGreater(full["eddy"]["coverage"], 3 * full["popularity"]["coverage"])

    def test_popularity_alone_misses_the_margin(self):
        res = run_eval("--weight-neighbours=0", "--weight-popular=0", "--diversity-cap=0")
        full, preq = res["full"], res["prequential"]
        self.assertLess(full["eddy"]["hr@10"], MARGIN * full["popularity"]["hr@10"], full)
        self.assertLess(preq["eddy"]["hr@10"], PREQ_MARGIN * preq["popularity"]["hr@10"], preq)


if __name__ == "__main__":
    unittest.main()
