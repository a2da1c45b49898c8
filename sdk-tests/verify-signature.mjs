// Verifies an Upstash-Signature with the real @upstash/qstash Receiver, as an
// @upstash/workflow app would. Reads one JSON object from stdin:
//   { "current": key, "next": key, "signature": jwt, "body": text, "url": text }
// and prints "verified" or "refused: <why>". (net/tests/qstash_sdk.rs runs it.)
import { Receiver } from "@upstash/qstash";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const { current, next, signature, body, url } = JSON.parse(input);
const receiver = new Receiver({ currentSigningKey: current, nextSigningKey: next, devMode: false });
try {
  await receiver.verify({ signature, body, url });
  console.log("verified");
} catch (error) {
  console.log(`refused: ${error.message}`);
}
