// Open one local HTML file in headless Chromium and print, as one JSON object, what an
// auditor's browser saw: console messages, uncaught errors, dialogs (alert/confirm), every
// request other than the file itself (there must be none), the scripts in the DOM, and
// each SVG's rendered size with the number and total drawn length of its paths.
//
//   node tests/browser/check_page.mjs FILE.html
//
// The browser is @sparticuz/chromium's binary, unpacked on first use into $TMPDIR/chromium.
import chromium from "@sparticuz/chromium";
import puppeteer from "puppeteer-core";
import { pathToFileURL } from "node:url";

const url = pathToFileURL(process.argv[2]).href;
const browser = await puppeteer.launch({
  args: chromium.args,
  executablePath: await chromium.executablePath(),
  headless: "shell",
});
try {
  const page = await browser.newPage();
  const seen = { console: [], errors: [], dialogs: [], requests: [] };
  page.on("console", (m) => seen.console.push({ type: m.type(), text: m.text() }));
  page.on("pageerror", (e) => seen.errors.push(String(e?.message ?? e)));
  page.on("dialog", async (d) => { seen.dialogs.push(d.message()); await d.dismiss(); });
  page.on("request", (r) => { if (r.url() !== url) seen.requests.push(r.url()); });
  const response = await page.goto(url, { waitUntil: "load" });
  const dom = await page.evaluate(() => ({
    title: document.title,
    scripts: document.querySelectorAll("script").length,
    text: document.body.innerText,
    svgs: [...document.querySelectorAll("svg")].map((svg) => {
      const box = svg.getBoundingClientRect();
      const paths = [...svg.querySelectorAll("path")];
      return {
        id: svg.id,
        width: box.width,
        height: box.height,
        paths: paths.length,
        pathLength: paths.reduce((total, p) => total + p.getTotalLength(), 0),
        circles: svg.querySelectorAll("circle").length,
        rects: svg.querySelectorAll("rect").length,
      };
    }),
  }));
  console.log(JSON.stringify({ status: response?.status() ?? null, ...seen, dom }));
} finally {
  await browser.close();
}
