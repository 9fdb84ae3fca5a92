// A Node.js reflection client (the npm package grpc-js-reflection-client over
// @grpc/grpc-js) against an Eddy server, for tests/integration/test_reflection.py: lists the
// services with both protocol versions, loads eddy.v1.Eddy from the server's descriptors
// and calls Recommend through it. Prints one JSON object.
//   node reflection_client.js HOST:PORT USER
'use strict';
const grpc = require('@grpc/grpc-js');
const { GrpcReflection } = require('grpc-js-reflection-client');

async function main() {
  const [host, user] = process.argv.slice(2);
  const creds = grpc.credentials.createInsecure();
  const out = {};
  for (const version of ['v1', 'v1alpha']) {
    out[version] = (await new GrpcReflection(host, creds, {}, version).listServices()).sort();
  }
  const reflection = new GrpcReflection(host, creds, {}, 'v1');
  const descriptor = await reflection.getDescriptorBySymbol('eddy.v1.Eddy');
  const pkg = descriptor.getPackageObject({ keepCase: true, enums: String, longs: String });
  const Eddy = pkg.eddy.v1.Eddy;
  out.methods = Object.keys(Eddy.service).sort();
  const stub = new Eddy(host, creds);
  out.recommend = await new Promise((resolve, reject) => {
    stub.Recommend({ user_id: user, max_recommendations: 5 },
                   { deadline: Date.now() + 10000 },
                   (err, resp) => (err ? reject(err) : resolve(resp)));
  });
  stub.close();
  console.log(JSON.stringify(out));
}

main().catch((err) => {
  console.error(`reflection client failed: ${err.stack || err}`);
  process.exit(1);
});
