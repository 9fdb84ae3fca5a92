"""The license is stated everywhere a user or a packager looks: LICENSE holds the full
Apache-2.0 text, NOTICE exists, and every package manifest (the Python and npm client
packages, the Node.js example and its lock file, the Helm chart, the container image) and
the README say Apache-2.0."""
import json
import os
import re
import tomllib
import unittest

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def read(rel):
    with open(os.path.join(REPO, rel)) as f:
        return f.read()


class LicenseTest(unittest.TestCase):
    def test_license_and_notice(self):
        text = read("LICENSE")
        self.assertIn("Apache License\n                           Version 2.0, January 2004", text)
        self.assertIn("END OF TERMS AND CONDITIONS", text)
        self.assertIn("APPENDIX: How to apply the Apache License to your work.", text)
        self.assertEqual(len(re.findall(r"(?m)^   \d+\. ", text)), 9)  # sections 1-9
        self.assertIn("Apache License, Version 2.0", read("NOTICE"))
        self.assertRegex(read("README.md"), r"(?m)^## License\n\nEddy is licensed under the "
                                            r"\[Apache License, Version 2\.0\]\(LICENSE\)")

    def test_manifests(self):
        with open(os.path.join(REPO, "client", "python", "pyproject.toml"), "rb") as f:
            self.assertEqual(tomllib.load(f)["project"]["license"], {"text": "Apache-2.0"})
        for rel in ("client/node/package.json", "examples/node/package.json"):
            self.assertEqual(json.loads(read(rel))["license"], "Apache-2.0", rel)
        lock = json.loads(read("examples/node/package-lock.json"))
        self.assertEqual(lock["packages"][""]["license"], "Apache-2.0")
        self.assertRegex(read("helm/eddy/Chart.yaml"), r"(?m)^  artifacthub\.io/license: Apache-2\.0$")
        self.assertIn('org.opencontainers.image.licenses="Apache-2.0"', read("Dockerfile"))


if __name__ == "__main__":
    unittest.main()
