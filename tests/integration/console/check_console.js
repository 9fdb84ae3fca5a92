// Opens the web console in Debian's headless Chromium (playwright-core, no bundled browser)
// and reports what the pages show, as one JSON object on stdout, for test_console.py:
//   node check_console.js '{"url": "http://127.0.0.1:9464/", "out": DIR, "node": ID,
//                           "charts": [0, 1, 2], "user": "u-7", "top": true}'
// Every console message of type error and every uncaught page error is reported in 'errors';
// screenshots go to 'out'. Waits are for conditions on the page, never fixed sleeps.
'use strict';
const path = require('path');
const {chromium} = require('playwright-core');

const WAIT_MS = 30000;

async function main() {
  const want = JSON.parse(process.argv[2]);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  const report = {errors: [], screenshots: []};
  try {
    const page = await browser.newPage({viewport: {width: 1280, height: 900}});
    page.on('console', (m) => { if (m.type() === 'error') report.errors.push(m.text()); });
    page.on('pageerror', (e) => report.errors.push(String(e)));
    const shot = async (name) => {
      const file = path.join(want.out, name + '.png');
      await page.screenshot({path: file, fullPage: true});
      report.screenshots.push(file);
    };

    // overview: the node (or the cluster's nodes) and the charts with points drawn
    await page.goto(want.url, {waitUntil: 'load'});
    await page.waitForFunction((id) => [...document.querySelectorAll('#nodes td')]
      .some((td) => td.textContent === id), want.node, {timeout: WAIT_MS});
    for (const i of want.charts || []) {
      await page.waitForFunction((i) => {
        const c = document.getElementById('chart-' + i);
        return Number(c.dataset.points || 0) >= 2 && Number(c.dataset.max || 0) > 0;
      }, i, {timeout: WAIT_MS});
    }
    report.overview = await page.evaluate(() => ({
      who: document.getElementById('who').textContent,
      tiles: [...document.querySelectorAll('.tile')].map((t) => t.textContent),
      nodes: [...document.querySelectorAll('#nodes tbody tr')].map((r) => [...r.cells].map((c) => c.textContent)),
      partitions: document.querySelectorAll('#partitions tbody tr').length,
      charts: [0, 1, 2].map((i) => {
        const c = document.getElementById('chart-' + i);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let inked = 0;
        for (let k = 3; k < d.length; k += 4) if (d[k] !== 0) inked++;
        return {caption: document.getElementById('cap-' + i).textContent,
                points: Number(c.dataset.points || 0), max: Number(c.dataset.max || 0), inked};
      }),
    }));
    await shot('overview');

    if (want.user) {
      await page.goto(want.url + '#user/' + encodeURIComponent(want.user));
      await page.waitForSelector('#recs tbody tr', {timeout: WAIT_MS});
      report.user = await page.evaluate(() => ({
        heading: document.querySelector('#user-out h2').textContent,
        recs: [...document.querySelectorAll('#recs tbody tr')].map((r) => [...r.cells].map((c) => c.textContent)),
        summary: (document.getElementById('profile-summary') || {}).textContent || '',
        sections: [...document.querySelectorAll('#user-out h3')].map((h) => h.textContent),
      }));
      await shot('user');
    }
    if (want.top) {
      await page.goto(want.url + '#top');
      await page.waitForSelector('#top-table tbody tr', {timeout: WAIT_MS});
      report.top = await page.evaluate(() =>
        [...document.querySelectorAll('#top-table tbody tr')].map((r) => [...r.cells].map((c) => c.textContent)));
      await shot('top');
    }
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(report) + '\n');
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack || e) + '\n');
  process.exit(1);
});
