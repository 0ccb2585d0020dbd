"""Runs examples/python against a live anoclip-server on a loopback port.

    example_test.py BIN_DIR REFERENCE_DIR EXAMPLES_DIR WORK_DIR
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import unittest

BIN_DIR, REFERENCE_DIR, EXAMPLES_DIR, WORK_DIR = sys.argv[1:5]
MODEL = os.path.join(REFERENCE_DIR, "tiny-vit", "model")
VOCAB = os.path.join(REFERENCE_DIR, "bpe_simple_vocab_16e6.txt.gz")
IMAGES = [os.path.join(REFERENCE_DIR, "tiny-vit", "images", f"case{k}.png") for k in range(3)]
STUBS = os.path.join(WORK_DIR, "stubs")


class ExampleTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        shutil.rmtree(WORK_DIR, ignore_errors=True)
        os.makedirs(WORK_DIR)
        subprocess.run(["sh", os.path.join(EXAMPLES_DIR, "generate_stubs.sh"), STUBS], check=True)
        ready = os.path.join(WORK_DIR, "ready.json")
        cls.log_path = os.path.join(WORK_DIR, "server.log")
        cls.log = open(cls.log_path, "wb")
        cls.server = subprocess.Popen(
            [os.path.join(BIN_DIR, "anoclip-server"), "--model", MODEL, "--vocab", VOCAB, "--listen", "127.0.0.1:0",
             "--metrics-listen", "127.0.0.1:0", "--threads", "1", "--warm", "bottle", "--ready-file", ready,
             "--log-format", "json", "--drain-timeout-s", "5"],
            stdout=cls.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not os.path.exists(ready):
            if cls.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("anoclip-server did not start:\n" + open(cls.log_path).read())
            time.sleep(0.05)
        cls.target = "127.0.0.1:%d" % json.load(open(ready))["grpc_port"]

    @classmethod
    def tearDownClass(cls):
        cls.server.send_signal(signal.SIGTERM)
        try:
            cls.server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            cls.server.kill()
            cls.server.wait()
        cls.log.close()

    def run_example(self, script, *args):
        env = dict(os.environ, PYTHONPATH=STUBS)
        return subprocess.run([sys.executable, os.path.join(EXAMPLES_DIR, script), "--target", self.target, *args],
                              env=env, capture_output=True, text=True, timeout=120)

    def log_lines(self):
        with open(self.log_path) as f:
            return [json.loads(line) for line in f if line.startswith("{")]

    def test_detect_and_inspect(self):
        heatmap = os.path.join(WORK_DIR, "heatmap.png")
        result = self.run_example("anoclip_example.py", "--class", "bottle", "--heatmap-out", heatmap,
                                  "--request-id", "python-example-1", *IMAGES)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        lines = result.stdout.splitlines()
        detect = [l for l in lines if l.startswith("detect ")]
        self.assertEqual(len(detect), 1, result.stdout)
        # The float heatmap decoded to the input's size (the cases are 64x64 images).
        self.assertIn("heatmap=", detect[0])
        self.assertIn("request_id=python-example-1", detect[0])
        with open(heatmap, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        answered = [l for l in lines if l.startswith("inspect ")]
        self.assertEqual(sorted(l.split(":")[0].split(" ", 1)[1] for l in answered), sorted(IMAGES), result.stdout)
        self.assertIn("3 answered on the stream, 0 failed", result.stdout)
        # The server logged each call with the id the client sent.
        calls = [l for l in self.log_lines() if l.get("msg") == "call" and l.get("request_id") == "python-example-1"]
        self.assertEqual(sorted(l["method"] for l in calls), ["Detect", "Detect", "Inspect", "Inspect", "Inspect"])
        self.assertTrue(all(l["code"] == "OK" for l in calls), calls)

    def test_reflection_lists_every_service(self):
        expected = {
            "anoclip.v1.AnomalyDetectionService": "Detect, Inspect, PrepareClass, ListClasses, EvictClass, GetModelInfo",
            "grpc.health.v1.Health": "Check, Watch",
            "grpc.reflection.v1.ServerReflection": "ServerReflectionInfo",
            "grpc.reflection.v1alpha.ServerReflection": "ServerReflectionInfo",
        }
        for version in ([], ["--v1alpha"]):
            result = self.run_example("list_services.py", *version)
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            listed = dict(line.split("  ", 1) for line in result.stdout.splitlines())
            self.assertEqual(set(listed), set(expected), result.stdout)
            for name, methods in expected.items():
                self.assertEqual(listed[name], f"({methods})", name)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
