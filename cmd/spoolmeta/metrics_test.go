package main

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
)

// scrape reads url with the Prometheus text parser.
func scrape(t testing.TB, url string) map[string]*dto.MetricFamily {
	t.Helper()
	res, err := http.Get(url)
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(res.Body)
	require.NoError(t, err)
	return fams
}

func labelsOf(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

// The /metrics of serve report the store's counts and its calls.
func TestServeMetricsEqualStats(t *testing.T) {
	t.Parallel()
	db := seedMany(t, 2000)
	s := serve(t, "--db", db)
	res, err := http.Get(s.url + "/api/stats") // some calls to measure
	require.NoError(t, err)
	var st struct {
		Due struct {
			Count int `json:"count"`
		} `json:"due"`
	}
	require.NoError(t, json.NewDecoder(res.Body).Decode(&st))
	res.Body.Close()
	fams := scrape(t, s.url+"/metrics")
	gauge := fams["retryspool_meta_messages"]
	require.NotNil(t, gauge, "queue gauges")
	require.Equal(t, dto.MetricType_GAUGE, gauge.GetType())
	stats, err := openCheck(t, db).Stats(context.Background())
	require.NoError(t, err)
	got := map[string]float64{}
	for _, m := range gauge.GetMetric() {
		l := labelsOf(m)
		require.Equal(t, "sqlite", l["db_system_name"])
		require.Equal(t, "messages", l["db_collection_name"])
		got[l["retryspool_state"]] = m.GetGauge().GetValue()
	}
	for _, s := range stats {
		require.Equal(t, float64(s.Count), got[s.State.String()], s.State.String())
	}
	ages := fams["retryspool_meta_oldest_age_seconds"]
	require.NotNil(t, ages)
	for _, m := range ages.GetMetric() {
		state := labelsOf(m)["retryspool_state"]
		for _, s := range stats {
			if s.State.String() == state && s.Count > 0 {
				want := time.Since(s.Oldest).Seconds()
				require.InDelta(t, want, m.GetGauge().GetValue(), 60, state)
			}
		}
	}
	due := fams["retryspool_meta_due"]
	require.NotNil(t, due)
	require.InDelta(t, float64(st.Due.Count), due.GetMetric()[0].GetGauge().GetValue(), 3) // messages fall due as time passes
	dur := fams["db_client_operation_duration_seconds"]
	require.NotNil(t, dur)
	require.Equal(t, dto.MetricType_HISTOGRAM, dur.GetType())
	ops := map[string]bool{}
	for _, m := range dur.GetMetric() {
		ops[labelsOf(m)["db_operation_name"]] = true
	}
	require.True(t, ops["Stats"], "%v", ops)
}
