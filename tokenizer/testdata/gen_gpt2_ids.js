// Generates gpt2_ids.json, the reference token ids for the tokenizer package's
// tests, with the npm package gpt-3-encoder (GPT-2's encoder.py in
// JavaScript: the same merges and pre-tokenization pattern as tiktoken's
// r50k/gpt2 encoding). Run once from the repository root:
//
//   (cd /tmp && npm pack gpt-3-encoder && tar xzf gpt-3-encoder-*.tgz)
//   node tokenizer/testdata/gen_gpt2_ids.js path/to/package
const fs = require('fs');
const path = require('path');
const { encode } = require(path.resolve(process.argv[2]));

const shakespeare = fs.readFileSync('examples/gpt/data/tinyshakespeare.txt', 'utf-8').slice(0, 20000);
const cases = [
  'Hello world',
  '  leading spaces and trailing   ',
  "don't you'll we've I'm she'd they're 'sup",
  'numbers 12345 and 3.14159, 1,000,000!',
  'unicode: café naïve 日本語 Ελληνικά 😀👍🏽',
  'tabs\tand\nnewlines\n\n\n  x\r\n',
  '<|endoftext|>',
  '    indented code() {\n        return x[i] + y; // comment\n    }\n',
  shakespeare,
];
const out = cases.map(text => ({ text, ids: encode(text) }));
fs.writeFileSync(path.join(__dirname, 'gpt2_ids.json'), JSON.stringify(out));
console.log('wrote', out.length, 'cases,', out.reduce((n, c) => n + c.ids.length, 0), 'ids');
