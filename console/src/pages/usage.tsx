// Usage: tokens, replies and estimated cost per day (a small SVG bar chart) and per widget.
import { get } from "../api";
import { formatNumber, t } from "../i18n";
import type { Usage as UsageReport, UsageLine } from "../types";
import { Heading, Loading, useLoad } from "../ui";

const WIDTH = 600;
const HEIGHT = 160;

/** Every day from `from` to `to` (YYYY-MM-DD, UTC), so days without replies show as gaps. */
function days(from: string, to: string): string[] {
  const out: string[] = [];
  for (let day = new Date(`${from}T00:00:00Z`); day <= new Date(`${to}T00:00:00Z`); day.setUTCDate(day.getUTCDate() + 1)) {
    out.push(day.toISOString().slice(0, 10));
  }
  return out;
}

export function Chart(props: { report: UsageReport }) {
  const byDay = new Map(props.report.data.map((line) => [line.day, line]));
  const all = days(props.report.from, props.report.to);
  const highest = Math.max(0, ...props.report.data.map((line) => line.total_tokens));
  const top = Math.max(1, highest);
  const step = WIDTH / Math.max(1, all.length);
  return (
    <figure>
      <svg class="chart" viewBox={`0 0 ${WIDTH} ${HEIGHT + 20}`} role="img" aria-labelledby="chart-title">
        <title id="chart-title">{t("usage_chart", { from: props.report.from, to: props.report.to })}</title>
        <line x1="0" y1={HEIGHT} x2={WIDTH} y2={HEIGHT} class="axis" />
        {all.map((day, index) => {
          const tokens = byDay.get(day)?.total_tokens || 0;
          const height = (tokens / top) * (HEIGHT - 10);
          return (
            <rect key={day} x={index * step + 1} y={HEIGHT - height} width={Math.max(1, step - 2)} height={height} class="bar">
              <title>{`${day}: ${formatNumber(tokens)} ${t("tokens")}`}</title>
            </rect>
          );
        })}
        <text x="0" y={HEIGHT + 16} class="label">{props.report.from}</text>
        <text x={WIDTH} y={HEIGHT + 16} class="label end">{props.report.to}</text>
      </svg>
      <figcaption class="muted">{t("usage_caption", { max: formatNumber(highest) })}</figcaption>
    </figure>
  );
}

function Row(props: { name: string; line: UsageLine; currency: string }) {
  const line = props.line;
  return (
    <tr>
      <th scope="row">{props.name}</th>
      <td>{formatNumber(line.replies_completed)}</td>
      <td>{formatNumber(line.total_tokens)}</td>
      <td>{formatNumber(line.estimated_cost, 4)} {props.currency}</td>
    </tr>
  );
}

export function Usage() {
  const loaded = useLoad(async () => {
    const [byDay, byWidget] = await Promise.all([
      get<UsageReport>("/api/v1/usage"),
      get<UsageReport>("/api/v1/usage?group_by=widget"),
    ]);
    return { byDay, byWidget };
  });
  if (!loaded.data) return <section><Heading>{t("usage")}</Heading><Loading error={loaded.error} /></section>;
  const { byDay, byWidget } = loaded.data;
  return (
    <section>
      <Heading>{t("usage")}</Heading>
      <Chart report={byDay} />
      <table>
        <caption>{t("usage_by_widget")}</caption>
        <thead>
          <tr><th scope="col">{t("widget")}</th><th scope="col">{t("replies")}</th><th scope="col">{t("tokens")}</th><th scope="col">{t("estimated_cost")}</th></tr>
        </thead>
        <tbody>
          {byWidget.data.map((line) => <Row key={line.widget_id} name={line.name || line.widget_id || ""} line={line} currency={byWidget.currency} />)}
        </tbody>
        <tfoot>
          <Row name={t("total")} line={byWidget.total} currency={byWidget.currency} />
        </tfoot>
      </table>
    </section>
  );
}
