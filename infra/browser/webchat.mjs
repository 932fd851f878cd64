// The web chat widget in a real browser: opens the local stack's demo page, sends a message,
// sees the typing indicator and the agent's reply, reloads and sees the history, and saves a
// screenshot. Usage: node webchat.mjs <demo page URL> <screenshot path>
// Chromium comes from Debian's package (CHROMIUM overrides the path); playwright-core brings
// no browser of its own.
import { chromium } from "playwright-core";

const [demoUrl, screenshot] = process.argv.slice(2);
if (!demoUrl || !screenshot) {
  console.error("usage: node webchat.mjs <demo page URL> <screenshot path>");
  process.exit(2);
}
const question = "Hola, ¿tienen departamentos con terraza? Escríbanme a web.visitor@example.com";
const step = (what) => console.log(`browser: ${what}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // Root in CI containers cannot use chromium's sandbox.
  args: ["--no-sandbox"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 720 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));

  step(`opening ${demoUrl}`);
  await page.goto(demoUrl);
  // Locators pierce the widget's open shadow root.
  await page.getByRole("button", { name: "Open chat" }).click();
  const input = page.getByLabel("Your message");
  await input.waitFor();
  // The indicator is shown from the moment the message is accepted until the reply arrives:
  // on an idle machine that can be shorter than a locator's polling interval (a CI run
  // missed it), so the page itself records that it was shown.
  await page.evaluate(() => {
    const typing = document.querySelector("[data-ai-agent-chat]").shadowRoot.querySelector(".typing");
    window.typingShown = !typing.hidden;
    new MutationObserver(() => {
      if (!typing.hidden) window.typingShown = true;
    }).observe(typing, { attributes: true, attributeFilter: ["hidden"] });
  });
  step("sending a message with the keyboard");
  await input.fill(question);
  await input.press("Enter");

  const typing = page.getByText("The agent is typing…");
  // Shown once the message is accepted; the first request may wait for watch to start the
  // web chat function (seen taking over 15 s on a busy 2-core machine).
  await page.waitForFunction(() => window.typingShown === true, null, { timeout: 60_000 });
  step("typing indicator shown");
  const reply = page.locator(".msg.out", { hasText: "[stub model]" });
  await reply.first().waitFor({ timeout: 90_000 });
  await typing.waitFor({ state: "hidden", timeout: 15_000 });
  step("reply shown, typing indicator gone");

  step("reloading: the history comes back");
  await page.reload();
  await page.getByRole("button", { name: "Open chat" }).click();
  const mine = page.locator(".msg.in", { hasText: "terraza" });
  await mine.first().waitFor({ timeout: 15_000 });
  await reply.first().waitFor({ timeout: 15_000 });
  const copies = await mine.count();
  if (copies !== 1) throw new Error(`the question is shown ${copies} times after the reload`);
  await page.screenshot({ path: screenshot });
  step(`screenshot saved to ${screenshot}`);
  if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);
  console.log("browser test passed");
} finally {
  await browser.close();
}
