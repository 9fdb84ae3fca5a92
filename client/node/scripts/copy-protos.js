// npm pack / npm publish: copy the protos the client loads (eddy/v1/eddy.proto) and the
// repository's LICENSE into the package, so the tarball is complete on its own.
'use strict';

const fs = require('fs');
const path = require('path');

const here = path.resolve(__dirname, '..');
const repo = path.resolve(here, '..', '..');
const protoDir = process.env.EDDY_PROTO_DIR || path.join(repo, 'proto');
const dest = path.join(here, 'proto', 'eddy', 'v1');
fs.mkdirSync(dest, { recursive: true });
fs.copyFileSync(path.join(protoDir, 'eddy', 'v1', 'eddy.proto'), path.join(dest, 'eddy.proto'));
fs.copyFileSync(path.join(repo, 'LICENSE'), path.join(here, 'LICENSE'));
